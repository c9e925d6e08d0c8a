"""Property-based tests over the arguments of the nd ops and of the command line: every call
either matches the float64 reference or raises ValueError/TypeError naming an argument; never a
crash, a hang or an XLA internal error."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_layers import conv_reference, pool_reference

from jaxlenet import cli, data, layers, nd

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
small = st.integers(0, 4)
pairs = st.tuples(small, small)


@SETTINGS
@given(h=st.integers(1, 7), w=st.integers(1, 7), kernel=pairs, stride=pairs, pad=pairs,
       pool_type=st.sampled_from(["max", "avg", "sum", "lp", "min"]),
       convention=st.sampled_from(["valid", "full", "same"]), cip=st.booleans(),
       p_value=st.sampled_from([None, 1, 2, 3, 4]))
def test_pooling_matches_reference_or_refuses(h, w, kernel, stride, pad, pool_type, convention,
                                              cip, p_value):
    x = np.random.default_rng(h * 8 + w).integers(-2, 3, (1, 2, h, w)).astype(np.float64)
    try:
        got = nd.Pooling(jnp.asarray(x), kernel=kernel, pool_type=pool_type, stride=stride,
                         pad=pad, pooling_convention=convention, count_include_pad=cip,
                         p_value=p_value)
    except (ValueError, TypeError) as exc:
        assert any(word in str(exc) for word in ("kernel", "stride", "pad", "pool_type",
                                                 "pooling_convention", "p_value", "data"))
        return
    expected = pool_reference(x, pool_type, kernel, stride, pad, convention, cip, p_value)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(h=st.integers(1, 7), channels=st.integers(1, 4), filters=st.integers(1, 4),
       kernel=pairs, stride=pairs, pad=pairs,
       dilate=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       groups=st.integers(0, 3), no_bias=st.booleans())
def test_convolution_matches_reference_or_refuses(h, channels, filters, kernel, stride, pad,
                                                  dilate, groups, no_bias):
    rng = np.random.default_rng(h)
    x = rng.standard_normal((1, channels, h, h + 1))
    w = rng.standard_normal((filters, max(channels // max(groups, 1), 1)) + kernel)
    b = None if no_bias else rng.standard_normal(filters)
    try:
        got = nd.Convolution(jnp.asarray(x), jnp.asarray(w), None if b is None else jnp.asarray(b),
                             kernel=kernel, stride=stride, pad=pad, dilate=dilate,
                             num_filter=filters, num_group=groups, no_bias=no_bias)
    except (ValueError, TypeError) as exc:
        assert any(word in str(exc) for word in ("kernel", "stride", "dilate", "pad", "weight",
                                                 "groups", "channels", "bias", "filter"))
        return
    expected = conv_reference(x, w, b, stride, pad, dilate, groups)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


FLAG_VALUES = {
    "--epochs": st.sampled_from(["1", "0", "-3", "x", "1e3", ""]),
    "--batch-size": st.sampled_from(["64", "0", "-1", "2.5", "abc"]),
    "--lr": st.sampled_from(["0.1", "nan", "inf", "-1", "0", "1e-3", "lr"]),
    "--momentum": st.sampled_from(["0.9", "1", "2", "-0.5", "nan"]),
    "--weight-decay": st.sampled_from(["0", "1e-4", "-1", "inf"]),
    "--init": st.sampled_from(["xavier", "he", ""]),
    "--schedule": st.sampled_from(["cosine", "linear"]),
    "--model": st.sampled_from(["lenet", "lenet5", "resnet"]),
    "--seed": st.sampled_from(["0", "-1", "seed"]),
    "--device": st.sampled_from(["cpu", "tpu"]),
    "--devices": st.sampled_from(["1", "0", "many"]),
}


@settings(SETTINGS, suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
@given(flags=st.lists(st.sampled_from(sorted(FLAG_VALUES)), max_size=4, unique=True),
       data_=st.data())
def test_every_train_flag_exits_0_or_2_with_one_line(flags, data_, monkeypatch, capsys,
                                                     tmp_path_factory):
    def no_dataset(*args, **kwargs):
        raise data.DataError("stop here: the arguments were accepted")

    monkeypatch.setattr(data, "load_fashion_mnist", no_dataset)
    out = tmp_path_factory.mktemp("run")
    argv = ["train", "--out", str(out)]
    for flag in flags:
        argv += [flag, data_.draw(FLAG_VALUES[flag])]
    code = cli.main(argv)
    _, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("jaxlenet: error: ") and "Traceback" not in err


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["bench", "--help"]])
def test_help_exits_cleanly(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 0
    assert "usage: jaxlenet" in capsys.readouterr().out


@SETTINGS
@given(h=st.integers(1, 7), window=st.integers(-1, 4), stride=st.one_of(st.none(),
       st.integers(-1, 3)), padding=st.integers(-1, 3),
       kind=st.sampled_from(["max", "avg", "sum", "lp", "mean"]),
       convention=st.sampled_from(["valid", "full", "floor"]),
       layout=st.sampled_from([None, "NCHW", "NHWC", "NCW"]))
def test_core_pool_matches_reference_or_refuses(h, window, stride, padding, kind, convention,
                                                layout):
    x = np.random.default_rng(h).integers(-2, 3, (1, 2, h, h + 2)).astype(np.float64)
    data = np.moveaxis(x, 1, -1) if layout == "NHWC" else x
    try:
        got = layers.pool(jnp.asarray(data), window, kind=kind, stride=stride, padding=padding,
                          convention=convention, p_value=2 if kind == "lp" else None,
                          layout=layout)
    except (ValueError, TypeError) as exc:
        assert any(word in str(exc) for word in ("kernel", "stride", "pad", "kind",
                                                 "convention", "layout"))
        return
    if layout == "NHWC":
        got = jnp.moveaxis(got, -1, 1)
    s = window if stride is None else stride
    expected = pool_reference(x, kind, (window,) * 2, (s,) * 2, (padding,) * 2, convention,
                              True, 2 if kind == "lp" else None)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)

"""jaxlenet.nd against golden fixtures written by the real MXNet 1.9.1
(scripts/make_mxnet_fixtures.py): forward values, gradients for a random cotangent, refusals; the
samplers' shapes and dtypes, and their distributions."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlenet import nd

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "mxnet"
INDEX = json.loads((FIXTURES / "cases.json").read_text())
ARRAYS = np.load(FIXTURES / "arrays.npz")
CASES = INDEX["cases"]


def _kwargs(case):
    kwargs = dict(case["kwargs"])
    for key, value in kwargs.items():
        if isinstance(value, list):
            kwargs[key] = tuple(value)
    return kwargs


def _call(case, inputs):
    kwargs = _kwargs(case)
    if case["op"] == "SoftmaxCrossEntropyLoss":
        return nd.SoftmaxCrossEntropyLoss(**kwargs)(inputs["pred"], inputs["label"],
                                                    inputs.get("sample_weight"))
    function = nd
    for part in case["op"].split("."):
        function = getattr(function, part)
    if case.get("positional"):
        return function(*[inputs[k] for k in sorted(inputs)], **kwargs)
    return function(**inputs, **kwargs)


def _inputs(case):
    prefix = case["name"] + "/input_"
    return {k[len(prefix):]: jnp.asarray(ARRAYS[k], case["dtype"])
            for k in ARRAYS.files if k.startswith(prefix)}


def test_fixtures_come_from_mxnet_1_9_1():
    assert INDEX["mxnet"] == "1.9.1"
    assert len(CASES) > 250
    assert {c["op"] for c in CASES} >= {
        "Convolution", "Pooling", "FullyConnected", "Activation", "relu", "flatten",
        "SoftmaxCrossEntropyLoss", "sum", "mean", "max", "argmax", "sqrt", "exp", "maximum",
        "one_hot", "log_softmax", "zeros_like", "stack", "concat", "add_n", "random.uniform",
        "random.normal"}


@pytest.mark.parametrize("case", [c for c in CASES if c["error"]], ids=lambda c: c["name"])
def test_refuses_what_mxnet_refuses(case):
    with pytest.raises((ValueError, TypeError)):
        _call(case, _inputs(case))


@pytest.mark.parametrize("case", [c for c in CASES if not c["error"] and not c.get("sampler")],
                         ids=lambda c: c["name"])
def test_matches_mxnet_forward_and_gradient(case):
    inputs = _inputs(case)
    name = case["name"]
    tol = dict(rtol=1e-4, atol=1e-4) if case["dtype"] == "float32" else dict(rtol=1e-9, atol=1e-9)
    if case["op"] == "SoftmaxCrossEntropyLoss":
        wrt = ["pred"] + (["label"] if case["kwargs"].get("sparse_label") is False else [])
    else:
        wrt = case.get("wrt", list(inputs))
    fixed = {k: v for k, v in inputs.items() if k not in wrt}

    def f(*args):
        return _call(case, {**fixed, **dict(zip(wrt, args))})

    @jax.jit  # one program per case: far quicker than each op compiled on its own
    def value_and_cotangents(args, cotangent):
        out, vjp = jax.vjp(f, *args)
        return out, (vjp(cotangent) if wrt else ())

    expected = ARRAYS[f"{name}/output"]
    cotangent = (jnp.asarray(ARRAYS[f"{name}/cotangent"], expected.dtype) if wrt
                 else jnp.zeros(expected.shape, expected.dtype))
    out, grads = value_and_cotangents([inputs[k] for k in wrt], cotangent)
    assert out.shape == expected.shape
    assert out.dtype == expected.dtype
    unspecified = np.isnan(expected)
    if unspecified.any():
        # MXNet's 3-D average of an empty window is NaN (0/0, see mxnet-semantics.md); jaxlenet
        # gives 0, like MXNet's 1-D and 2-D kernels. Such windows send no gradient either way.
        assert case["op"] == "Pooling" and len(case["kwargs"]["kernel"]) == 3
        np.testing.assert_array_equal(np.asarray(out)[unspecified], 0)
        expected = np.where(unspecified, 0, expected)
    np.testing.assert_allclose(out, expected, **tol)
    for key, grad in zip(wrt, grads):
        np.testing.assert_allclose(grad, ARRAYS[f"{name}/grad_{key}"], **tol,
                                   err_msg=f"gradient of {key}")


@pytest.mark.parametrize("case", [c for c in CASES if not c["error"] and c["op"] == "Pooling"][:40],
                         ids=lambda c: c["name"])
def test_pooling_under_jit_matches_eager(case):
    inputs = _inputs(case)
    eager = _call(case, inputs)
    jitted = jax.jit(lambda x: _call(case, {"data": x}))(inputs["data"])
    np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", [c for c in CASES if c.get("sampler")], ids=lambda c: c["name"])
def test_samplers_have_mxnets_shapes_and_dtypes(case):
    out = _call(case, {})
    assert out.shape == tuple(ARRAYS[f"{case['name']}/output_shape"])
    assert str(out.dtype) == str(ARRAYS[f"{case['name']}/output_dtype"])


def test_samplers_draw_from_their_distributions():
    key = jax.random.PRNGKey(7)
    u = nd.random.uniform(-1.0, 3.0, shape=(200_000,), key=key)
    assert float(u.min()) >= -1.0 and float(u.max()) < 3.0
    assert abs(float(u.mean()) - 1.0) < 0.02 and abs(float(u.std()) - 4 / 12 ** 0.5) < 0.02
    z = nd.random.normal(2.0, 0.5, shape=(200_000,), key=key)
    assert abs(float(z.mean()) - 2.0) < 0.01 and abs(float(z.std()) - 0.5) < 0.01
    per_row = nd.random.uniform(nd.array([0.0, 10.0]), nd.array([1.0, 11.0]), shape=(1000,))
    assert per_row.shape == (2, 1000) and float(per_row[1].min()) >= 10.0
    # No global state: the same call gives the same array, another key another one.
    np.testing.assert_array_equal(nd.random.normal(shape=(3,)), nd.random.normal(shape=(3,)))
    assert not np.array_equal(nd.random.normal(shape=(3,), key=key), nd.random.normal(shape=(3,)))
    with pytest.raises(TypeError, match="out= is not supported"):
        nd.random.uniform(shape=(2,), out=nd.zeros((2,)))


def test_comparisons_count_as_float32_in_reductions():
    """MXNet's ``==`` gives float32 0/1; JAX's gives bool, which the reductions take as 0/1."""
    output, label = nd.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), nd.array([1, 1, 1])
    accuracy = nd.mean(output.argmax(axis=1) == label.astype("float32"))
    assert accuracy.shape == (1,) and accuracy.dtype == jnp.float32
    assert float(accuracy[0]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("name", ["lenet", "lenet5"])
def test_the_model_lists_itself_as_gluon_prints_the_tutorials_net(name):
    from jaxlenet import models
    assert models.describe(models.build(name)) == INDEX["listings"][name]

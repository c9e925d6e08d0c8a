"""Networks as data: specs validated in one line, built-ins equal to the LeNets written layer by
layer, shapes and FLOPs computed by hand, and the fast implementation equal to the reference on
generated specs (hypothesis), with the C++ kernels and without."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxlenet import initializers, layers, models, specs
from jaxlenet.fast import kernels
from jaxlenet.losses import softmax_cross_entropy


def test_builtins_have_the_parameters_of_the_lenets_written_out():
    """The specs build exactly the networks the tutorial writes, layer for layer: the same
    parameter names and the same initial values for the same key."""
    uniform, xavier = initializers.uniform(0.07), initializers.xavier()
    written = {
        "lenet": layers.serial(
            ("conv0", layers.Conv(20, 5, activation="relu", weight_init=uniform)),
            ("pool0", layers.Pool(2)),
            ("conv1", layers.Conv(50, 3, activation="relu", weight_init=uniform)),
            ("pool1", layers.Pool(2)), ("flatten0", layers.Flatten()),
            ("dense0", layers.Dense(128, activation="relu", weight_init=uniform)),
            ("dense1", layers.Dense(10, weight_init=uniform))),
        "lenet5": layers.serial(
            ("conv0", layers.Conv(6, 5, activation="sigmoid", weight_init=xavier)),
            ("pool0", layers.Pool(2)),
            ("conv1", layers.Conv(16, 5, activation="sigmoid", weight_init=xavier)),
            ("pool1", layers.Pool(2)),
            ("dense0", layers.Dense(120, activation="sigmoid", weight_init=xavier)),
            ("dense1", layers.Dense(84, activation="sigmoid", weight_init=xavier)),
            ("dense2", layers.Dense(10, weight_init=xavier))),
        "mlp": layers.serial(
            ("flatten0", layers.Flatten()),
            ("dense0", layers.Dense(256, activation="relu", weight_init=uniform)),
            ("dense1", layers.Dense(10, weight_init=uniform))),
    }
    key = jax.random.PRNGKey(3)
    for name, net in written.items():
        want = net.init(key, (1, 1, 28, 28))[1]
        got = models.build(name, impl="reference").init(key)
        assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want), name
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_array_equal(a, b)


def test_parameters_and_flops_per_layer_counted_by_hand():
    """A multiply-add is 2 FLOPs; a bias and an activation 1 per output element; a max pool of
    k elements k - 1 per output, an average k."""
    conv = lambda filters, per_filter, side, act=True: filters * side * side * (
        2 * per_filter + 1 + act)
    dense = lambda units, inputs, act: units * (2 * inputs + 1 + act)
    want = {
        "lenet": [conv(20, 25, 24), 20 * 12 * 12 * 3, conv(50, 20 * 9, 10), 50 * 5 * 5 * 3, 0,
                  dense(128, 1250, True), dense(10, 128, False)],
        "lenet5": [conv(6, 25, 24), 6 * 12 * 12 * 3, conv(16, 6 * 25, 8), 16 * 4 * 4 * 3,
                   dense(120, 256, True), dense(84, 120, True), dense(10, 84, False)],
        "mlp": [0, dense(256, 784, True), dense(10, 256, False)],
    }
    params = {"lenet": [520, 0, 9050, 0, 0, 160_128, 1290],
              "lenet5": [156, 0, 2416, 0, 30_840, 10_164, 850],
              "mlp": [0, 200_960, 2570]}
    for name in want:
        rows = models.summary(models.build(name))
        assert [row.flops for row in rows] == want[name], name
        assert [row.params for row in rows] == params[name], name
        assert models.forward_flops(models.build(name)) == sum(want[name])
    # 2.74 MFLOPs (LeNet) against 0.41 (the MLP): the exercise's comparison.
    assert round(sum(want["lenet"]) / 1e6, 2) == 2.74 and round(sum(want["mlp"]) / 1e6, 2) == 0.41
    average = {**specs.lenet(), "layers": [
        {**layer, "pool": "avg"} if layer["kind"] == "pool" else layer
        for layer in specs.lenet()["layers"]]}
    assert specs.layer_flops(average)[1] == 20 * 12 * 12 * 4


def test_a_network_defined_in_code_is_counted_by_xla():
    model = models.from_layers((("flatten0", layers.Flatten()), ("dense0", layers.Dense(10))),
                               impl="reference")
    rows = models.summary(model)
    assert rows[1].params == 7850 and rows[1].flops >= 2 * 784 * 10


def _spec(*layer_list, **top):
    return {"name": "net", "input": [1, 28, 28], "layers": list(layer_list), **top}


DENSE10 = {"kind": "dense", "units": 10}


@pytest.mark.parametrize("spec,match", [
    ([], "a spec is a JSON object"),
    (_spec(DENSE10, colour="red"), "unknown field \"colour\""),
    (_spec(), "layers must be a list of 1 to"),
    (_spec({"kind": "convolution"}, DENSE10), "layer 0: field 'kind' \"convolution\" is not one"),
    (_spec({"kind": "conv", "channels": 4}, DENSE10), "layer 0 (conv0): missing field 'kernel'"),
    (_spec({"kind": "conv", "channels": 0, "kernel": 3}, DENSE10),
     "layer 0 (conv0): field 'channels' 0 must be an integer from 1"),
    (_spec({"kind": "conv", "channels": 4, "kernel": 3, "strides": 2}, DENSE10),
     "layer 0 (conv0): unknown field \"strides\" for a conv layer"),
    (_spec({"kind": "conv", "channels": 4, "kernel": [3, True]}, DENSE10),
     "layer 0 (conv0): field 'kernel' [3, true] must be"),
    (_spec({"kind": "conv", "channels": 4, "kernel": 3, "groups": 3}, DENSE10),
     "layer 0 (conv0): field 'groups' 3 must be a positive integer dividing"),
    (_spec({"kind": "conv", "channels": 4, "kernel": 3, "activation": "gelu"}, DENSE10),
     "layer 0 (conv0): field 'activation' \"gelu\" is not one of"),
    (_spec({"kind": "pool", "window": 2, "pool": "median"}, DENSE10),
     "layer 0 (pool0): field 'pool' \"median\" is not one of"),
    (_spec({"kind": "pool", "window": 2, "padding": 2}, DENSE10),
     "layer 0 (pool0): field 'padding' 2 must be smaller than the window"),
    (_spec({"kind": "pool", "window": 4}, {"kind": "pool", "window": 4},
           {"kind": "conv", "channels": 3, "kernel": 3, "name": "late"}, DENSE10),
     "layer 2 (late): field 'kernel' 3 does not fit the 1x1 image"),
    (_spec({"kind": "pool", "window": 30}, DENSE10), "layer 0 (pool0): field 'window' 30 does "
     "not fit the 28x28 image"),
    (_spec({"kind": "flatten"}, {"kind": "conv", "channels": 3, "kernel": 3}, DENSE10),
     "layer 1 (conv0): a conv layer needs images"),
    (_spec({"kind": "dense", "units": 7}), "ends in shape (7,); it must end in 10 class scores"),
    (_spec({"kind": "dense", "units": 10, "name": "x"}, {"kind": "activation",
                                                        "function": "relu", "name": "x"}),
     "layer 1 (x): name 'x' is used twice"),
    (_spec({"kind": "dense", "units": 10, "name": "1x"}), "layer 0 (1x): field 'name' \"1x\""),
    (_spec(DENSE10, input=[1, 28]), "input [1, 28] must be [channels, height, width]"),
    (_spec(DENSE10, init="zeros"), "init \"zeros\" is not one of"),
    (_spec(DENSE10, init=["xavier"]), "init [\"xavier\"] is not one of"),
    (_spec({"kind": "activation", "function": {"relu": 1}}, DENSE10),
     "layer 0 (activation0): field 'function' {\"relu\": 1} is not one of"),
    (_spec({"kind": "dense", "units": 10, "activation": [[[[]]]]}),
     "layer 0 (dense0): field 'activation' [[[[]]]] is not one of"),
    (_spec({"kind": "dense", "units": 40_000}, {"kind": "dense", "units": 1000}, DENSE10),
     "layer 1 (dense1): the network has over 50,000,000 parameters"),
])
def test_bad_specs_are_refused_in_one_line_naming_the_layer_and_field(spec, match):
    with pytest.raises(specs.SpecError) as error:
        specs.validate(spec)
    assert match in str(error.value) and "\n" not in str(error.value)


def test_validation_completes_a_spec_with_names_and_defaults():
    spec = specs.validate(_spec({"kind": "conv", "channels": 4, "kernel": 3},
                                {"kind": "pool", "window": 2}, DENSE10))
    assert spec == {"name": "net", "input": [1, 28, 28], "init": "uniform", "layers": [
        {"kind": "conv", "name": "conv0", "channels": 4, "kernel": 3, "stride": 1, "padding": 0,
         "dilation": 1, "groups": 1, "activation": None},
        {"kind": "pool", "name": "pool0", "window": 2, "pool": "max", "stride": None,
         "padding": 0},
        {"kind": "dense", "name": "dense0", "units": 10, "activation": None}]}
    assert specs.validate(spec) == spec
    assert json.loads(specs.dumps(spec)) == spec


def test_a_spec_file_is_read_and_named_after_its_stem(tmp_path):
    path = tmp_path / "wide net.json"
    path.write_text(json.dumps({"layers": [{"kind": "flatten"}, DENSE10]}))
    assert specs.load(path)["name"] == "wide_net"
    with pytest.raises(specs.SpecError, match="not a regular file"):
        specs.load(tmp_path)
    for text, match in (("{", "not a JSON spec"), ("[1]", "a spec is a JSON object"),
                        ("[" * 100_000, "not a JSON spec"),
                        ('{"layers": [{"kind": "dense", "units": 3}]}',
                         "the network ends in shape (3,)")):
        path.write_text(text)
        with pytest.raises(specs.SpecError) as error:
            specs.load(path)
        assert str(error.value).startswith(f"{path}: ") and match in str(error.value)


# --------------------------------------------------------------------- generated specs


@st.composite
def generated_specs(draw):
    """Small networks over every spec kind: odd kernels, padding, strides, dilation, groups,
    max/avg/sum pools, 1-channel and 3-channel inputs."""
    channels = draw(st.sampled_from([1, 3]))
    size = draw(st.integers(9, 16))
    shape, layer_list = (channels, size, size), []
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            groups = draw(st.sampled_from([1, shape[0]])) if shape[0] > 1 else 1
            layer = {"kind": "conv", "channels": groups * draw(st.integers(1, 4)),
                     "kernel": draw(st.sampled_from([1, 2, 3, [3, 5]])),
                     "stride": draw(st.sampled_from([1, 1, 2])),
                     "padding": draw(st.sampled_from([0, 1, 2])),
                     "dilation": draw(st.sampled_from([1, 1, 2])), "groups": groups,
                     "activation": draw(st.sampled_from([None, "relu", "sigmoid", "tanh"]))}
        else:
            window = draw(st.sampled_from([2, 3, [2, 3]]))
            layer = {"kind": "pool", "window": window,
                     "pool": draw(st.sampled_from(["max", "max", "avg", "sum"])),
                     "stride": draw(st.sampled_from([None, 1, 2])),
                     "padding": draw(st.sampled_from([0, 1]))}
        try:
            shape = specs.output_shape(specs.validate(_spec(layer, DENSE10, input=list(shape)))
                                       ["layers"][0], shape)
        except specs.SpecError:
            continue
        layer_list.append(layer)
    if draw(st.booleans()):
        layer_list.append({"kind": "flatten"})
    if draw(st.booleans()):
        layer_list.append({"kind": "dense", "units": draw(st.integers(1, 12)),
                           "activation": draw(st.sampled_from(["relu", "softrelu"]))})
    layer_list.append(DENSE10)
    return specs.validate(_spec(*layer_list, input=[channels, size, size]))


SLOW = settings(max_examples=12, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@SLOW
@given(generated_specs())
def test_spec_shapes_are_the_reference_layers_shapes(spec):
    model = models.build(spec, impl="reference")
    x = jax.ShapeDtypeStruct((2, *spec["input"]), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    for layer, (name, reference_layer) in zip(spec["layers"], model.layers):
        out = jax.eval_shape(reference_layer.apply, params.get(name, {}), x)
        assert tuple(out.shape[1:]) == specs.output_shape(layer, x.shape[1:]), layer
        x = out


def _assert_fast_equals_reference(spec, dtype, rtol, gradient_rtol):
    fast_model = models.build(spec, impl="fast", platform="cpu", dtype=dtype)
    reference = models.build(spec, impl="reference", dtype=jnp.float64)
    params = fast_model.init(jax.random.PRNGKey(1))
    params64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.uniform(jax.random.PRNGKey(2), (5, *spec["input"]), dtype)
    y = jnp.arange(5) % 10

    def loss(model):
        return lambda p: jnp.mean(softmax_cross_entropy(model.apply(p, x), y))

    got = jax.jit(fast_model.apply, compiler_options=fast_model.compiler_options)(params, x)
    want = jax.jit(reference.apply)(params64, x.astype(jnp.float64))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)
    grads = jax.jit(jax.grad(loss(fast_model)), compiler_options=fast_model.compiler_options)
    for g, w in zip(jax.tree_util.tree_leaves(grads(params)),
                    jax.tree_util.tree_leaves(jax.jit(jax.grad(loss(reference)))(params64))):
        np.testing.assert_allclose(g, w, rtol=gradient_rtol,
                                   atol=gradient_rtol * max(float(jnp.abs(w).max()), 1e-3))


@SLOW
@given(generated_specs())
def test_fast_equals_reference_on_generated_specs_in_float64(spec):
    """float64: XLA's formulations of the fast implementation (the kernels take float32 only),
    so this runs wherever the kernels cannot be built too."""
    _assert_fast_equals_reference(spec, jnp.float64, 1e-9, 1e-7)


@SLOW
@given(generated_specs())
def test_fast_equals_reference_on_generated_specs_in_float32(spec):
    """float32 on the CPU: the C++ kernels wherever they run (stride-1 convolutions), XLA's
    formulations elsewhere and where the kernels are off."""
    _assert_fast_equals_reference(spec, jnp.float32, 2e-4, 2e-3)


def test_the_fast_implementation_runs_each_layer_it_covers_and_the_rest_as_written():
    """A layer of your own runs as written, on channels-first data, between fast layers."""
    calls = []

    def mine():
        def apply(params, x):
            calls.append(x.shape)
            return x * 2.0
        return layers.Layer(lambda key, shape: (shape, {}), apply)

    def architecture(nn):
        return (("conv0", nn.Conv(4, 3, activation="relu")), ("double", mine()),
                ("pool0", nn.Pool(2, kind="avg")), ("dense0", nn.Dense(10)))

    fast_model = models.from_layers(architecture, name="mine", impl="fast", platform="cpu")
    reference = models.from_layers(architecture, name="mine", impl="reference")
    assert fast_model.spec is None and fast_model.name == "mine"
    assert fast_model.placement[1] == "double: as written, channels-first"
    assert fast_model.placement[0] == ("conv0: C++ kernels" if kernels.available()
                                       else "conv0: XLA, channels-last")
    params = reference.init(jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 1, 28, 28), jnp.float32)
    np.testing.assert_allclose(fast_model.apply(params, x), reference.apply(params, x),
                               rtol=1e-4, atol=1e-5)
    assert calls[-1] == (3, 4, 26, 26)  # channels-first, as the layer was written for
    # A sequence of pairs works too (the reference layers run as written in both).
    pairs = models.from_layers(architecture(layers), impl="fast", platform="cpu")
    np.testing.assert_allclose(pairs.apply(params, x), reference.apply(params, x), rtol=1e-5,
                               atol=1e-6)


def test_specs_of_other_input_shapes_build_and_check_their_images():
    spec = specs.validate(_spec({"kind": "conv", "channels": 2, "kernel": 3}, DENSE10,
                                input=[3, 12, 10]))
    model = models.build(spec)
    assert model.input_shape == (3, 12, 10)
    params = model.init(jax.random.PRNGKey(0))
    assert model.apply(params, jnp.zeros((2, 3, 12, 10), jnp.float32)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"images must be \(N, 3, 12, 10\)"):
        model.apply(params, jnp.zeros((2, 1, 28, 28), jnp.float32))
    assert math.prod(models.summary(model)[0].shape) == 2 * 10 * 8


# ---------------------------------------------------------------- everywhere LeNet goes

from jaxlenet import checkpoint, cli, data, runs, train  # noqa: E402

REAL_DATA = pytest.mark.skipif(data.locate() is None, reason="Fashion-MNIST is not installed")
AVERAGE_6_16 = {"name": "lenet-avg", "init": "xavier", "layers": [
    {"kind": "conv", "channels": 6, "kernel": 5, "activation": "relu"},
    {"kind": "pool", "pool": "avg", "window": 2},
    {"kind": "conv", "channels": 16, "kernel": 5, "activation": "relu"},
    {"kind": "pool", "pool": "avg", "window": 2},
    {"kind": "flatten"}, {"kind": "dense", "units": 120, "activation": "relu"}, DENSE10]}


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@REAL_DATA
def test_a_spec_file_trains_and_its_checkpoint_alone_rebuilds_it(capsys, tmp_path,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(AVERAGE_6_16))
    code, stdout, err = run_cli(capsys, "train", "--model", path, "--epochs", "1", "--limit",
                                "1024", "--batch-size", "64", "--no-plots")
    assert code == 0, err
    out = tmp_path / "runs" / "lenet-avg"  # named after the spec
    assert "training lenet-avg" in err and "MFLOPs per image" in err
    assert "pool0: reference pool, channels-last" in err
    assert ("conv1: C++ kernels" if kernels.available() else "conv1: XLA, channels-last") in err
    meta, _ = checkpoint.read(out / runs.CHECKPOINT)
    assert meta["spec"] == specs.validate(AVERAGE_6_16)
    path.unlink()  # the checkpoint needs nothing but itself
    code, stdout, _ = run_cli(capsys, "summary", "--checkpoint", out, "--spec")
    assert code == 0 and json.loads(stdout) == specs.validate(AVERAGE_6_16)
    code, stdout, _ = run_cli(capsys, "evaluate", "--checkpoint", out)
    assert code == 0 and stdout.startswith("lenet-avg after epoch 1: ")
    test_acc = json.loads((out / "metrics.jsonl").read_text())["test_acc"]
    assert f"test acc {test_acc:.4f}" in stdout
    code, _, err = run_cli(capsys, "export", "--checkpoint", out, "--out", tmp_path / "a.shlo")
    assert code == 0, err
    exported = jax.export.deserialize(bytearray((tmp_path / "a.shlo").read_bytes()))
    config, model, params, *_ = train.load_checkpoint(out)
    x = jax.random.uniform(jax.random.PRNGKey(0), (3, 1, 28, 28), jnp.float32)
    np.testing.assert_allclose(exported.call(x), model.apply(params, x), rtol=1e-4, atol=1e-5)
    code, _, err = run_cli(capsys, "export", "--checkpoint", out, "--format", "mxnet", "--out",
                           tmp_path / "a.params")
    assert code == 0, err
    code, _, err = run_cli(capsys, "import-mxnet", tmp_path / "a.params", "--model", "lenet",
                           "--out", tmp_path / "back")
    assert code == 2 and "another model's parameters?" in err
    (tmp_path / "spec.json").write_text(json.dumps(AVERAGE_6_16))
    code, _, err = run_cli(capsys, "import-mxnet", tmp_path / "a.params", "--model",
                           tmp_path / "spec.json", "--out", tmp_path / "back")
    assert code == 0, err
    _, _, back, *_ = train.load_checkpoint(tmp_path / "back")
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(a, b)
    code, stdout, _ = run_cli(capsys, "train", "--model", tmp_path / "spec.json", "--epochs",
                              "1", "--limit", "1024", "--batch-size", "64", "--no-plots")
    assert code == 0 and (tmp_path / "runs" / "lenet-avg-2").is_dir()


def test_a_bad_spec_file_is_one_line_and_exit_2(capsys, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"layers": [{"kind": "conv", "channels": 4, "kernel": 40},
                                           DENSE10]}))
    for command in ("train", "summary"):
        code, _, err = run_cli(capsys, command, "--model", path)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert f"{path}: layer 0 (conv0): field 'kernel' 40 does not fit the 28x28 image" in err
    code, _, err = run_cli(capsys, "train", "--model", "vgg")
    assert code == 2 and "invalid choice: 'vgg'" in err


def test_summary_prints_an_editable_spec_and_the_flops(capsys, tmp_path):
    code, stdout, _ = run_cli(capsys, "summary", "--model", "lenet", "--spec")
    assert code == 0 and json.loads(stdout) == specs.lenet()
    (tmp_path / "edited.json").write_text(stdout.replace('"channels": 20', '"channels": 40'))
    code, stdout, _ = run_cli(capsys, "summary", "--model", tmp_path / "edited.json")
    assert code == 0 and "Conv2D(1 -> 40, kernel_size=(5, 5)" in stdout
    code, stdout, _ = run_cli(capsys, "summary", "--model", "mlp")
    assert code == 0 and "forward FLOPs per image: 407,050 (0.41 MFLOPs" in stdout


def test_a_sum_pool_has_no_gluon_layer(tmp_path):
    from jaxlenet import mxnet_params
    spec = {**AVERAGE_6_16, "layers": [{**layer, "pool": "sum"} if layer["kind"] == "pool"
                                       else layer for layer in AVERAGE_6_16["layers"]]}
    model = models.build(spec)
    with pytest.raises(mxnet_params.ParamsError, match="pool0 is a sum pool, which Gluon has no"):
        mxnet_params.from_params(model.init(jax.random.PRNGKey(0)), model)


@REAL_DATA
def test_a_network_defined_in_code_trains_and_its_checkpoint_says_how_to_read_it(capsys,
                                                                                   tmp_path):
    def architecture(nn):
        return (("conv0", nn.Conv(8, 3, activation="relu")), ("pool0", nn.Pool(2)),
                ("dense0", nn.Dense(10)))

    dataset = data.load_fashion_mnist()
    model = models.from_layers(architecture, name="tiny")
    config = train.Config(epochs=1, limit=1024, batch_size=64)
    params, history = train.fit(config, dataset, out_dir=tmp_path / "run", model=model,
                                log=lambda _: None)
    assert history[0]["test_acc"] > 0.4
    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", tmp_path / "run")
    assert code == 2 and err.count("\n") == 1
    assert "the network 'tiny' is defined in code" in err and "model=models.from_layers" in err
    _, loaded, saved, *_ = train.load_checkpoint(tmp_path / "run", model=model)
    for a, b in zip(jax.tree_util.tree_leaves(saved), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(a, b)
    # --resume through fit with the same model continues the run.
    _, history = train.fit(dataclasses.replace(config, epochs=2, schedule="constant"), dataset,
                           out_dir=tmp_path / "run2", model=model, log=lambda _: None)
    _, history = train.fit(dataclasses.replace(config, epochs=3, schedule="constant"), dataset,
                           out_dir=tmp_path / "run2", model=model, resume=True,
                           log=lambda _: None)
    assert [r["epoch"] for r in history] == [1, 2, 3]


def test_a_checkpoint_from_before_specs_loads_as_its_builtin(tmp_path):
    config = train.Config(model="lenet5", epochs=1)
    model, _, params, opt_state, key = train.initial_state(config)
    checkpoint.save(tmp_path / runs.CHECKPOINT,
                    jax.device_get({"params": params, "opt_state": opt_state, "key": key}),
                    {"epoch": 1, "config": config.to_dict(), "impl": model.impl, "history": []})
    saved, model, loaded, *_ = train.load_checkpoint(tmp_path)
    assert saved.model == "lenet5" and model.spec == specs.lenet5()
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(a, b)

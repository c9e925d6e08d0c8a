"""Which program runs where, and the exported model: the GPU gets the reference program (checked
by lowering for CUDA here, without a GPU), a checkpoint of either implementation evaluates in the
other, and ``jaxlenet export`` writes StableHLO that runs without jaxlenet's kernels."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import small_dataset

from jaxlenet import checkpoint, cli, data, models, runs, train


def _spec(tree):
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def _programs_for_cuda(name, impl):
    """The StableHLO of the compiled training epoch and evaluation, lowered for CUDA."""
    config = train.Config(model=name, impl=impl, batch_size=256)
    model, opt, params, opt_state, key = train.initial_state(config, 235, platform="gpu")
    images = jax.ShapeDtypeStruct((60000, 28, 28), jnp.uint8)
    labels = jax.ShapeDtypeStruct((60000,), jnp.int32)
    epoch = jax.export.export(train.make_train_epoch(model, opt, 256), platforms=("cuda",))(
        _spec(params), _spec(opt_state), images, labels, _spec(key))
    evaluate = jax.export.export(train.make_evaluate(model), platforms=("cuda",))(
        _spec(params), images, labels)
    return model, _without_locations(epoch.mlir_module() + evaluate.mlir_module())


def _without_locations(text):
    """StableHLO text without its source locations (file, line), which name the caller."""
    text = "\n".join(line for line in text.splitlines() if not line.startswith("#loc"))
    return re.sub(r" loc\(#loc\d*\)", "", text)


@pytest.mark.parametrize("name", ["lenet", "lenet5"])
def test_on_a_gpu_auto_runs_the_reference_program(name):
    model, program = _programs_for_cuda(name, "auto")
    assert model.impl == "reference" and model.compiler_options == {}
    assert "custom_call" not in program
    assert program == _programs_for_cuda(name, "reference")[1]
    convolutions = re.findall(r"dim_numbers = (\[[^\]]*\]x\[[^\]]*\]->\[[^\]]*\])", program)
    # The training epoch: forward, input and weight gradients of the second convolution, forward
    # and weight gradient of the first; evaluation: two forwards. All autodiff's, in MXNet's
    # channels-first layout (spatial dimensions last).
    assert len(convolutions) == 7
    assert all(part.endswith("0, 1]") for numbers in convolutions
               for part in re.split("x|->", numbers)), convolutions


def test_on_the_cpu_auto_runs_the_fast_program():
    config = train.Config(impl="auto", batch_size=256)
    model, opt, params, opt_state, key = train.initial_state(config, 235, platform="cpu")
    assert model.impl == "fast"
    text = train.make_train_epoch(model, opt, 256).lower(
        params, opt_state, jnp.zeros((512, 28, 28), jnp.uint8), jnp.zeros(512, jnp.int32),
        key).as_text()
    if jax.config.jax_platforms in (None, "", "cpu") and models.fast.kernels_available():
        for kernel in ("conv_max_forward", "conv_pool_forward", "conv_pool_input_grad",
                       "conv_pool_param_grads"):
            assert f"jaxlenet_{kernel}" in text, kernel


@pytest.mark.parametrize("trained,evaluated", [("fast", "reference"), ("reference", "fast")])
def test_a_checkpoint_evaluates_to_the_same_predictions_in_the_other_implementation(
        tmp_path, trained, evaluated):
    dataset = small_dataset(n_train=256, n_test=200)
    config = train.Config(epochs=1, batch_size=64, impl=trained)
    train.fit(config, dataset, out_dir=tmp_path, device="cpu", devices=1, log=lambda _: None)
    meta, _ = checkpoint.read(tmp_path / runs.CHECKPOINT)
    assert meta["config"]["impl"] == trained and meta["impl"] == trained
    images = data.to_float_nchw(dataset[1][0])
    predictions = {}
    for impl in (trained, evaluated):
        _, model, params, _, _, _ = train.load_checkpoint(tmp_path, impl=impl)
        assert model.impl == impl
        predictions[impl] = train.predict(model, params, images)
    np.testing.assert_allclose(predictions[trained], predictions[evaluated], rtol=1e-4, atol=1e-6)
    assert np.array_equal(predictions[trained].argmax(1), predictions[evaluated].argmax(1))


def test_export_writes_stablehlo_that_runs_without_jaxlenet(tmp_path, capsys):
    dataset = small_dataset(n_train=256, n_test=100)
    train.fit(train.Config(epochs=1, batch_size=64), dataset, out_dir=tmp_path / "run",
              log=lambda _: None)
    out = tmp_path / "lenet.stablehlo"
    assert cli.main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().err
    exported = jax.export.deserialize(bytearray(out.read_bytes()))
    assert exported.platforms == ("cpu", "cuda")
    calls = set(re.findall(r"custom_call @(\w+)", exported.mlir_module()))
    assert calls <= {"shape_assertion"}, calls  # none of jaxlenet's kernels
    _, model, params, _, _, _ = train.load_checkpoint(tmp_path / "run")
    for batch in (1, 37, 100):  # a symbolic batch dimension
        images = data.to_float_nchw(dataset[1][0][:batch])
        np.testing.assert_allclose(jax.nn.softmax(exported.call(images)),
                                   train.predict(model, params, images), rtol=1e-4, atol=1e-6)


def test_the_exported_model_needs_only_jax_and_flatbuffers(tmp_path):
    """In a fresh Python where importing jaxlenet fails, the exported file loads and runs with
    jax (and flatbuffers, which deserialize needs) alone."""
    import subprocess
    import sys

    dataset = small_dataset(n_train=128, n_test=20)
    train.fit(train.Config(epochs=1, batch_size=64), dataset, out_dir=tmp_path / "run",
              log=lambda _: None)
    out = tmp_path / "lenet.stablehlo"
    assert cli.main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(out)]) == 0
    images = data.to_float_nchw(dataset[1][0][:5])
    np.save(tmp_path / "images.npy", images)
    _, model, params, _, _, _ = train.load_checkpoint(tmp_path / "run")
    code = (
        "import sys\n"
        "class NoJaxlenet:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'jaxlenet':\n"
        "            raise ImportError('jaxlenet is not installed here')\n"
        "sys.meta_path.insert(0, NoJaxlenet())\n"
        "import numpy as np, jax, flatbuffers\n"
        f"exported = jax.export.deserialize(bytearray(open({str(out)!r}, 'rb').read()))\n"
        f"logits = exported.call(np.load({str(tmp_path / 'images.npy')!r}))\n"
        "assert 'jaxlenet' not in sys.modules\n"
        f"np.save({str(tmp_path / 'logits.npy')!r}, np.asarray(logits))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                          "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), model.apply(params, images),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("argv,match", [
    (["export", "--checkpoint", "/no/such/run", "--out", "x"], "no checkpoint"),
    (["export", "--checkpoint", "RUN", "--out", "/no/such/dir/model.stablehlo"], "no directory"),
    (["export", "--checkpoint", "RUN", "--out", "."], "is a directory"),
])
def test_export_errors_are_one_line(tmp_path, capsys, argv, match):
    train.fit(train.Config(epochs=1, batch_size=64), small_dataset(n_train=64, n_test=10),
              out_dir=tmp_path / "run", log=lambda _: None, warn=lambda _: None)
    argv = [str(tmp_path / "run") if a == "RUN" else a for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err, err

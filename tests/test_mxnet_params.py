"""LeNets trained by the real MXNet 1.9.1 (scripts/make_mxnet_lenets.py) come across: their
``.params`` files read without MXNet give MXNet's logits, and jaxlenet writes what MXNet's
``nd.save`` writes, byte for byte; damaged or foreign files are refused in one line."""

import pathlib

import jax
import numpy as np
import pytest

from jaxlenet import cli, data, models, mxnet_params, specs, train

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "mxnet"
LOGITS = np.load(FIXTURES / "lenets_logits.npz")
# lenet-avg: the exercises' kind of change (6 and 16 filters, average pooling), trained by MXNet
# from Gluon's layers; jaxlenet knows it from its spec file alone.
NETWORKS = {"lenet": "lenet", "lenet5": "lenet5", "lenet-avg": str(FIXTURES / "lenet-avg.json")}


def network(name):
    return specs.load(NETWORKS[name]) if name == "lenet-avg" else name
REAL_DATA = pytest.mark.skipif(data.locate() is None, reason="Fashion-MNIST is not installed "
                               "(apt-get install dataset-fashion-mnist); .ci/run installs it")


def test_the_fixtures_come_from_mxnet_1_9_1():
    assert str(LOGITS["mxnet"]) == "1.9.1"
    assert list(mxnet_params.read(FIXTURES / "lenet.params")) == [
        "0.weight", "0.bias", "2.weight", "2.bias", "5.weight", "5.bias", "6.weight", "6.bias"]


@REAL_DATA
@pytest.mark.parametrize("name,file", [("lenet", "lenet.params"), ("lenet5", "lenet5.params"),
                                       ("lenet5", "lenet5-prefixed.params"),
                                       ("lenet-avg", "lenet-avg.params")])
@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_imported_parameters_give_mxnets_logits(name, file, impl):
    model = models.build(network(name), impl=impl)
    params = mxnet_params.to_params(mxnet_params.read(FIXTURES / file), model)
    (_, _), (test_x, _) = data.load_fashion_mnist()
    logits = jax.jit(model.apply)(params, data.to_float_nchw(test_x[:100]))
    np.testing.assert_allclose(logits, LOGITS[name], rtol=1e-5, atol=1e-5)


@REAL_DATA
@pytest.mark.parametrize("name", ["lenet", "lenet5", "lenet-avg"])
def test_import_evaluate_predict_and_export_from_the_command_line(name, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["import-mxnet", str(FIXTURES / f"{name}.params"), "--model",
                     NETWORKS[name], "--out", str(run)]) == 0
    assert cli.main(["evaluate", "--checkpoint", str(run)]) == 0
    assert "test acc" in capsys.readouterr().out
    _, model, params, _, _, _ = train.load_checkpoint(run)
    (_, _), (test_x, _) = data.load_fashion_mnist()
    probabilities = train.predict(model, params, data.to_float_nchw(test_x[:100]))
    assert np.array_equal(probabilities.argmax(1), LOGITS[name].argmax(1))
    assert cli.main(["export", "--format", "mxnet", "--checkpoint", str(run), "--out",
                     str(tmp_path / "back.params")]) == 0
    # What Gluon's save_parameters (nd.save) wrote for the same arrays, byte for byte.
    assert (tmp_path / "back.params").read_bytes() == (FIXTURES / f"{name}.params").read_bytes()


def test_the_prefixed_file_holds_the_same_parameters_as_gluons():
    model = models.build("lenet5", impl="reference")
    structural = mxnet_params.to_params(mxnet_params.read(FIXTURES / "lenet5.params"), model)
    prefixed = mxnet_params.to_params(mxnet_params.read(FIXTURES / "lenet5-prefixed.params"),
                                      model)
    for a, b in zip(jax.tree_util.tree_leaves(structural), jax.tree_util.tree_leaves(prefixed)):
        np.testing.assert_array_equal(a, b)


def test_dumps_and_loads_round_trip_every_dtype_and_lists():
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "bb": np.array([5.0]),
              "c": np.array([[1, -2]], np.int32), "d": np.ones((1, 2, 1), np.float16)}
    back = mxnet_params.loads(mxnet_params.dumps(arrays))
    assert list(back) == list(arrays)
    for key in arrays:
        assert back[key].dtype == arrays[key].dtype
        np.testing.assert_array_equal(back[key], arrays[key])


def _damaged(tmp_path, how):
    raw = (FIXTURES / "lenet.params").read_bytes()
    path = tmp_path / "damaged.params"
    if how == "truncated":
        path.write_bytes(raw[:len(raw) // 2])
    elif how == "header":
        path.write_bytes(raw[:10])
    elif how == "not params":
        path.write_bytes(b"PK\x03\x04 a zip, say")
    elif how == "wrong shape":
        arrays = mxnet_params.read(FIXTURES / "lenet.params")
        arrays["5.bias"] = np.zeros(64, np.float32)
        path.write_bytes(mxnet_params.dumps(arrays))
    elif how == "extra":
        arrays = mxnet_params.read(FIXTURES / "lenet.params")
        arrays["7.weight"] = np.zeros((3, 3), np.float32)
        path.write_bytes(mxnet_params.dumps(arrays))
    elif how == "another model":
        path.write_bytes((FIXTURES / "lenet5.params").read_bytes())
    return path


@pytest.mark.parametrize("how,match", [
    ("truncated", "truncated (it ends at byte"), ("header", "truncated"),
    ("not params", "not an MXNet .params file"),
    ("wrong shape", "lenet's dense0 needs a bias of shape (128,) beside '5.weight'"),
    ("extra", "holds arrays lenet does not have: '7.weight'"),
    ("another model", "lenet's conv0 needs a weight of shape (20, 1, 5, 5)"),
])
def test_wrong_files_are_refused_in_one_line(tmp_path, capsys, how, match):
    code = cli.main(["import-mxnet", str(_damaged(tmp_path, how)), "--model", "lenet", "--out",
                     str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("jaxlenet: error:"), err
    assert match in err, err
    assert not (tmp_path / "run").exists()

"""`jaxlenet bench` runs end to end and reports consistent numbers (a smoke test: timing checks
belong to the benchmark itself, not to pytest)."""

import importlib.util
import json

import pytest

from jaxlenet import bench, cli, models


def test_training_flops_counts_forward_and_both_gradients():
    # lenet: conv 2*25*20*576 + conv 2*180*50*100 + dense 2*1250*128 + 2*128*10 forward,
    # three times over, minus the first layer's input gradient.
    forward = 2 * 25 * 20 * 576 + 2 * 180 * 50 * 100 + 2 * 1250 * 128 + 2 * 128 * 10
    assert bench.training_flops(models.build("lenet")) == 3 * forward - 2 * 25 * 20 * 576


@pytest.mark.parametrize("torch", [False, True])
def test_bench_reports_every_number(torch, capsys):
    if torch and importlib.util.find_spec("torch") is None:
        pytest.skip("PyTorch is not installed")
    code = cli.main(["bench", "--model", "lenet5", "--epochs", "1", "--limit", "512", "--json"]
                    + ([] if torch else ["--no-torch"]))
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    entry = report["models"]["lenet5"]
    assert report["train_examples"] == 512 and report["peak_rss_mb_jax"] > 0
    assert entry["train_s_per_epoch"] > 0 and entry["compile_s"] > 0
    assert entry["train_images_per_s"] == pytest.approx(512 / entry["train_s_per_epoch"], rel=0.02)
    assert entry["infer_images_per_s"] > 0
    assert ("ratio_jax_to_torch" in entry) == torch


@pytest.mark.parametrize("pool", ["max", "avg", "sum"])
def test_pytorchs_network_from_a_spec_computes_the_same_function(pool):
    """The PyTorch network bench builds from a spec, given the spec's parameters, gives the
    reference's logits: the same layers, shapes and arithmetic (a sum pool included)."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("PyTorch is not installed")
    import jax
    import numpy as np
    import torch

    from jaxlenet import specs
    spec = specs.lenet()
    spec["layers"][1]["pool"] = spec["layers"][3]["pool"] = pool
    spec["layers"][0]["padding"], spec["layers"][2]["stride"] = 1, [1, 2]
    model = models.build(spec, impl="reference")
    params = model.init(jax.random.PRNGKey(0))
    net = bench.torch_network(specs.validate(spec))
    weights = [params[name][part] for name in ("conv0", "conv1", "dense0", "dense1")
               for part in ("weight", "bias")]
    with torch.no_grad():
        for parameter, value in zip(net.parameters(), weights, strict=True):
            parameter.copy_(torch.from_numpy(np.array(value)))
        x = np.random.default_rng(0).random((3, 1, 28, 28), np.float32)
        np.testing.assert_allclose(net(torch.from_numpy(x)).numpy(), model.apply(params, x),
                                   rtol=1e-4, atol=1e-5)

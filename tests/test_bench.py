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

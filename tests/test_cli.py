"""The ``jaxlenet`` command end to end on the real Fashion-MNIST (a small --limit), and every usage
error: exit status 2, one line on stderr, no traceback."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxlenet import cli, data, train

REAL_DATA = pytest.mark.skipif(data.locate() is None, reason="Fashion-MNIST is not installed "
                               "(apt-get install dataset-fashion-mnist); .ci/run installs it")


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv,match", [
    (["train", "--epochs", "-1"], "--epochs: expected a number of epochs from 1"),
    (["train", "--epochs", "two"], "--epochs"),
    (["train", "--lr", "nan"], "--lr: expected a finite number"),
    (["train", "--lr", "-0.1"], "--lr"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--model", "vgg"], "invalid choice: 'vgg'"),
    (["train", "--momentum", "1.5"], "momentum"),
    (["train", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["evaluate", "--checkpoint", "/no/such/run"], "no checkpoint"),
    (["predict", "--checkpoint", "/no/such/run", "x.png"], "no checkpoint"),
    (["summary", "--model", "alexnet"], "invalid choice"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_exit_2_with_one_line(capsys, argv, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("jaxlenet: error:"), err
    assert match in err
    assert "Traceback" not in err


def test_summary_prints_the_tutorials_shapes(capsys):
    code, out, _ = run_cli(capsys, "summary", "--model", "lenet5")
    assert code == 0
    assert "conv0 output shape:\t (1, 6, 24, 24)" in out
    assert "pool1 output shape:\t (1, 16, 4, 4)" in out
    assert "dense2 output shape:\t (1, 10)" in out
    assert "total params: 44,426" in out


def test_gpu_that_is_absent_is_a_clear_error(capsys, tmp_path):
    import jax
    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("a GPU is present")
    code, _, err = run_cli(capsys, "train", "--device", "gpu", "--out", str(tmp_path / "r"),
                           "--data-dir", str(tmp_path), "--limit", "64")
    if data.locate(tmp_path) is None and code == 2 and "Fashion-MNIST" in err:
        pytest.skip("no dataset to get as far as device selection")
    assert code == 2 and "no GPU" in err


def assert_within_images(accuracy: float, expected: float, images: int = 3) -> None:
    """Two programs' accuracies on the 10,000 test images agree to ``images`` images: the order
    of a float32 sum (the CPU's vector width, the implementation) decides the few images whose
    two best scores are closer than its rounding."""
    assert abs(accuracy - expected) <= images / 10_000 + 1e-9, (accuracy, expected)


@REAL_DATA
def test_train_evaluate_predict_resume(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", "--epochs", "1", "--limit", "2048",
                                "--batch-size", "64", "--schedule", "constant", "--out", str(out))
    assert code == 0, err
    assert stdout.startswith("epoch 1  loss ")
    assert " train acc " in stdout and " test acc " in stdout and stdout.rstrip().endswith(" s")
    for name in ("checkpoint.npz", "metrics.jsonl", "curves.png", "predictions.png"):
        assert (out / name).stat().st_size > 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert set(record) >= {"epoch", "loss", "train_acc", "test_acc", "seconds"}
    assert record["test_acc"] > 0.5  # 2,048 images are enough for a clear signal

    code, stdout, _ = run_cli(capsys, "evaluate", "--checkpoint", str(out))
    assert code == 0
    assert f"test acc {record['test_acc']:.4f}" in stdout and "fast implementation" in stdout
    code, stdout, _ = run_cli(capsys, "evaluate", "--checkpoint", str(out), "--impl", "reference")
    assert code == 0 and "reference implementation" in stdout
    # Another program (the reference's sums in another order) may move a test image whose two
    # best scores are within float32's rounding: a few of 10,000, never more.
    assert_within_images(float(stdout.split("test acc ")[1].split()[0]), record["test_acc"])

    # The exported model, run without jaxlenet, classifies the test set as evaluate does.
    code, _, _ = run_cli(capsys, "export", "--checkpoint", str(out), "--out",
                         str(tmp_path / "lenet.stablehlo"))
    assert code == 0
    import jax
    exported = jax.export.deserialize(bytearray((tmp_path / "lenet.stablehlo").read_bytes()))
    (_, _), (test_x, test_y) = data.load_fashion_mnist()
    logits = np.concatenate([exported.call(data.to_float_nchw(test_x[i:i + 2500]))
                             for i in range(0, len(test_x), 2500)])
    assert_within_images(float(np.mean(logits.argmax(1) == test_y)), record["test_acc"])

    code, _, err = run_cli(capsys, "train", "--epochs", "2", "--limit", "2048",
                           "--batch-size", "64", "--schedule", "constant", "--out", str(out))
    assert code == 2 and "stopped after epoch 1 of 1" not in err  # never overwrites a run
    assert "already holds this run, complete" in err
    code, _, err = run_cli(capsys, "train", "--epochs", "2", "--limit", "2048", "--out", str(out))
    assert code == 2 and f"schedule 'constant' (asked: '{train.Config.schedule}'); choose " \
        "another --out" in err
    code, stdout, _ = run_cli(capsys, "train", "--epochs", "2", "--limit", "2048",
                              "--out", str(out), "--resume", "--no-plots")
    assert code == 0 and stdout.startswith("epoch 2  ")  # the checkpoint's batch size and schedule
    code, _, err = run_cli(capsys, "train", "--resume", "--lr", "0.3", "--out", str(out))
    assert code == 2 and f"trained with lr {train.Config.lr} (asked: 0.3)" in err

    from PIL import Image
    Image.fromarray(test_x[0]).resize((64, 64)).save(tmp_path / "shoe.png")
    Image.fromarray(255 - test_x[1]).convert("RGB").save(tmp_path / "inverted.jpg")
    (tmp_path / "not-an-image.png").write_text("hello")
    code, stdout, _ = run_cli(capsys, "predict", "--checkpoint", str(out),
                              str(tmp_path / "shoe.png"), str(tmp_path / "inverted.jpg"))
    assert code == 0
    lines = stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(tmp_path / "shoe.png") + ": ")
    assert lines[0].split(": ")[1].split(" ")[0] in " ".join(data.CLASS_NAMES)
    code, _, err = run_cli(capsys, "predict", "--checkpoint", str(out),
                           str(tmp_path / "not-an-image.png"))
    assert code == 2 and "not a readable PNG/JPEG" in err


@REAL_DATA
def test_the_command_ends_at_once_with_its_output_and_files_complete(tmp_path):
    """`jaxlenet` skips the interpreter's teardown: what it printed into a pipe (block-buffered)
    must still arrive whole, with exit status 0 and every file written."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run([sys.executable, "-m", "jaxlenet", "train", "--epochs", "2", "--limit",
                           "512", "--batch-size", "64", "--out", str(out), "--no-plots"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [line.split()[1] for line in done.stdout.splitlines()] == ["1", "2"]
    assert f"jaxlenet: {out} holds checkpoint.npz, metrics.jsonl" in done.stderr
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


@REAL_DATA
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_second_run_into_the_same_out_is_refused_and_a_signal_keeps_the_checkpoint(tmp_path,
                                                                                   signum):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "jaxlenet", "train", "--epochs", "50", "--limit", "4096",
               "--batch-size", "64", "--out", str(out), "--no-plots"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.npz").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / "checkpoint.npz").exists()
        second = subprocess.run(command + ["--resume"], capture_output=True, text=True, env=env,
                                timeout=120)
        assert second.returncode == 2
        assert "another run is training into" in second.stderr
        first.send_signal(signum)
        _, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 130
    assert "interrupted" in err and "Traceback" not in err
    from jaxlenet import train
    _, _, params, _, _, epoch = train.load_checkpoint(out)
    assert epoch >= 1
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in
               __import__("jax").tree_util.tree_leaves(params))

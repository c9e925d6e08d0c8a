"""What a careful user can do wrong, and what jaxlenet does then (docs/robustness.md): never a
finished run overwritten, never a silent wrong result, never a traceback, never false advice."""

import gzip
import os
import pathlib
import struct
import subprocess
import sys
import time
import zlib

import jax
import numpy as np
import pytest
from test_train import small_dataset

from jaxlenet import checkpoint, cli, data, images, runs, train

REAL_DATA = pytest.mark.skipif(data.locate() is None, reason="Fashion-MNIST is not installed "
                               "(apt-get install dataset-fashion-mnist); .ci/run installs it")
QUIET = dict(log=lambda _: None, warn=lambda _: None)


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, match):
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("jaxlenet: error:"), err
    assert "Traceback" not in err
    assert match in err, err


def ends_in_one_line_error(code, err, match):
    """A run's header lines, then one error line."""
    assert code == 2 and "Traceback" not in err, err
    one_line_error(code, err.splitlines(keepends=True)[-1], match)


# -------------------------------------------------------------- 1, 11: runs are never overwritten


def test_fit_refuses_a_directory_that_holds_a_run_and_says_what_to_do(tmp_path):
    dataset = small_dataset(n_train=64, n_test=10)
    config = train.Config(epochs=2, batch_size=32, schedule="constant")
    train.fit(config, dataset, out_dir=tmp_path, **QUIET)
    before = (tmp_path / runs.CHECKPOINT).read_bytes()
    with pytest.raises(runs.RunExists, match="already holds this run, complete"):
        train.fit(config, dataset, out_dir=tmp_path, **QUIET)
    with pytest.raises(runs.RunExists, match=rf"another run, trained with lr {config.lr} "
                                             r"\(asked: 0.3\)"):
        train.fit(train.Config(epochs=2, batch_size=32, lr=0.3), dataset, out_dir=tmp_path,
                  **QUIET)
    assert (tmp_path / runs.CHECKPOINT).read_bytes() == before


def test_fit_refuses_a_directory_another_run_holds(tmp_path):
    with runs.open_run(tmp_path / "run", resume=False):
        with pytest.raises(runs.RunLocked, match="another run is training into"):
            train.fit(train.Config(epochs=1, batch_size=32), small_dataset(64, 10),
                      out_dir=tmp_path / "run", **QUIET)


@REAL_DATA
def test_two_commands_into_one_directory_train_once(tmp_path):
    """The second command starts while the first runs (or has just finished): it is refused,
    and the first's checkpoint stays."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "jaxlenet", "train", "--epochs", "1", "--limit", "1024",
               "--no-plots", "--out", str(out)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    first_out, first_err = first.communicate(timeout=300)
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 2], (first_err, second.stderr)
    refused = second.stderr if second.returncode == 2 else first_err
    assert "another run is training into" in refused or "already holds this run" in refused
    assert [m["epoch"] for m in runs.read_metrics(out)] == [1]
    assert train.read_run(out)[1] == 1


@REAL_DATA
def test_the_default_out_is_per_model_and_never_taken(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    flags = ["--epochs", "1", "--limit", "2048", "--no-plots"]
    assert run_cli(capsys, "train", *flags)[0] == 0
    code, _, err = run_cli(capsys, "train", *flags, "--lr", "0.05")
    assert code == 0 and "into runs/lenet-2" in err
    code, _, err = run_cli(capsys, "train", *flags, "--model", "lenet5")
    assert code in (0, cli.EXIT_AT_CHANCE) and "into runs/lenet5 " in err  # 32 steps of sigmoids
    assert train.read_run("runs/lenet")[0].lr == train.Config.lr
    assert train.read_run("runs/lenet-2")[0].lr == 0.05


@REAL_DATA
def test_resume_of_a_complete_run_says_so_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, "train", "--epochs", "1", "--limit", "2048", "--out", out)[0] == 0
    stamps = {name: (out / name).stat().st_mtime_ns for name in runs.PLOTS + (runs.CHECKPOINT,)}
    code, stdout, _ = run_cli(capsys, "train", "--resume", "--out", out)
    assert code == 0 and "already complete (1 of 1 epochs)" in stdout
    assert stamps == {name: (out / name).stat().st_mtime_ns for name in stamps}
    # A truncated metrics.jsonl: the run says it rewrites it from the checkpoint, and does.
    whole = (out / runs.METRICS).read_text()
    (out / runs.METRICS).write_text(whole[:len(whole) // 2])
    code, stdout, err = run_cli(capsys, "train", "--resume", "--out", out)
    assert code == 0 and "rewriting it from the checkpoint" in err
    assert (out / runs.METRICS).read_text() == whole


@REAL_DATA
def test_the_closing_line_names_only_the_files_that_exist(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--epochs", "1", "--limit", "256", "--no-plots",
                           "--out", tmp_path / "run")
    assert code in (0, cli.EXIT_AT_CHANCE), err
    assert f"jaxlenet: {tmp_path / 'run'} holds checkpoint.npz, metrics.jsonl\n" in err


# ---------------------------------------------------------------------- 2: stuck at chance level


@REAL_DATA
def test_a_run_at_chance_says_why_and_does_not_exit_0(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--lr", "5", "--epochs", "1", "--limit", "2048",
                           "--no-plots", "--out", tmp_path / "run")
    assert code == cli.EXIT_AT_CHANCE, err
    assert "warning: after epoch 1" in err and "chance level" in err
    assert "momentum 0.9 moves like lr 50" in err and "--recipe tutorial" in err
    assert "jaxlenet: failed: the run ended at chance level" in err


def test_chance_advice_names_the_cause():
    assert "--momentum 0" in train.chance_advice(train.Config(lr=0.5, momentum=0.9))
    assert "sigmoids" in train.chance_advice(train.Config(**train.RECIPES["tutorial-lenet5"]))
    assert "too few" in train.chance_advice(train.Config(), steps=16)
    assert "momentum" not in train.chance_advice(train.Config())  # the defaults are sane
    assert train.at_chance(2.30, 0.10) and not train.at_chance(0.6, 0.8)


def test_recipes_are_the_tutorials():
    tutorial = train.Config(**train.RECIPES["tutorial"])
    assert (tutorial.model, tutorial.lr, tutorial.momentum, tutorial.batch_size, tutorial.init,
            tutorial.epochs, tutorial.weight_decay) == ("lenet", 0.5, 0.0, 256, "uniform", 10, 0)
    lenet5 = train.Config(**train.RECIPES["tutorial-lenet5"])
    assert (lenet5.model, lenet5.lr, lenet5.momentum, lenet5.epochs) == ("lenet5", 0.9, 0.0, 5)


@REAL_DATA
def test_a_recipe_is_one_flag_and_other_flags_amend_it(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--recipe", "tutorial", "--epochs", "1", "--limit",
                           "512", "--no-plots", "--out", tmp_path / "run")
    assert code in (0, cli.EXIT_AT_CHANCE), err
    config, _ = train.read_run(tmp_path / "run")
    assert (config.lr, config.momentum, config.batch_size, config.epochs) == (0.5, 0.0, 256, 1)
    code, _, err = run_cli(capsys, "train", "--resume", "--recipe", "tutorial", "--out",
                           tmp_path / "run")
    one_line_error(code, err, "--recipe starts a new run")


# ------------------------------------------------------------- 3: resume keeps every setting


def test_resume_checks_the_limit_and_names_it(tmp_path):
    dataset = small_dataset(n_train=128, n_test=10)
    config = train.Config(epochs=2, batch_size=32, schedule="constant", limit=64)
    train.fit(train.Config(epochs=1, batch_size=32, schedule="constant", limit=64), dataset,
              out_dir=tmp_path, **QUIET)
    with pytest.raises(ValueError, match=r"limit 64 \(asked: None\)"):
        train.fit(train.Config(epochs=2, batch_size=32, schedule="constant"), dataset,
                  out_dir=tmp_path, resume=True, **QUIET)
    whole, _ = train.fit(config, dataset, **QUIET)
    resumed, _ = train.fit(config, dataset, out_dir=tmp_path, resume=True, **QUIET)
    for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(a, b)


@REAL_DATA
def test_resume_without_the_limit_flag_uses_the_recorded_one(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--schedule", "constant", "--no-plots", "--out", out]
    assert run_cli(capsys, "train", "--epochs", "1", "--limit", "2048", *flags)[0] == 0
    assert run_cli(capsys, "train", "--epochs", "2", "--resume", *flags)[0] == 0
    assert train.read_run(out)[0].limit == 2048
    code, _, err = run_cli(capsys, "train", "--epochs", "3", "--limit", "4096", "--resume", *flags)
    one_line_error(code, err, "limit 2048 (asked: 4096)")


# ------------------------------------------------------------------------- 4, 7, 9: images


def _png(path, width, height, mode="L"):
    """A PNG whose header says ``width`` x ``height``; its pixel data is one empty row (a
    decoder would fail, but nothing should get that far)."""
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b""))
    return path


def test_16_bit_images_are_scaled_by_their_own_range(tmp_path):
    from PIL import Image
    ramp = np.linspace(0, 65535, 28 * 28).reshape(28, 28).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    Image.fromarray((ramp // 257).astype(np.uint8)).save(tmp_path / "ramp8.png")
    with Image.open(tmp_path / "ramp16.png") as opened:
        assert opened.mode.startswith("I")  # as Pillow gives 16-bit PNGs
    sixteen, eight = images.load_images([tmp_path / "ramp16.png", tmp_path / "ramp8.png"],
                                        invert="no")
    np.testing.assert_allclose(sixteen, eight, atol=1 / 255)
    assert 0.45 < sixteen.mean() < 0.55  # not clipped to white
    Image.fromarray(ramp.astype(np.float32) / 65535).save(tmp_path / "float.tiff")
    with pytest.raises(ValueError, match="floating-point pixels"):
        images.load_images([tmp_path / "float.tiff"])


@pytest.mark.parametrize("width,height,match", [(9000, 9000, "more than the 64,000,000"),
                                                (30000, 30000, "too many pixels")])
def test_huge_images_are_refused_in_one_line_without_warnings(tmp_path, capsys, recwarn, width,
                                                              height, match):
    path = _png(tmp_path / "huge.png", width, height)
    train.fit(train.Config(epochs=1, batch_size=32), small_dataset(64, 10), out_dir=tmp_path / "r",
              **QUIET)
    code, _, err = run_cli(capsys, "predict", "--checkpoint", tmp_path / "r", path)
    one_line_error(code, err, match)
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]


# ---------------------------------------------------------------------------- 5: kernels
# (test_fast_kernels.py::test_a_damaged_library_in_the_cache_is_rebuilt_not_loaded)

# ---------------------------------------------------------------------------- 6: gzip bomb


def test_a_gzip_bomb_is_refused_after_reading_what_is_expected(tmp_path):
    """64 MiB of zeros in 64 KiB, where 47 MB are expected: decompression stops past them."""
    expected = data.payload_size(data.FILES["train_images"][2])
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(bomb, "wb") as f:
        for _ in range(64):
            f.write(bytes(1 << 20))
    with pytest.raises(data.DataError, match=f"holds more than the {expected:,} bytes expected"):
        data.read_payload(bomb, max_size=expected)
    (tmp_path / "big").write_bytes(bytes(5000))  # uncompressed and too large: never read
    with pytest.raises(data.DataError, match="5,000 bytes, more than the 100 expected"):
        data.read_payload(tmp_path / "big", max_size=100)


def test_decompression_stops_past_the_expected_size():
    raw = gzip.compress(bytes(10_000_000))
    with pytest.raises(data.DataError, match="more than the 1,000 bytes"):
        data.decompress(raw, "bomb", max_size=1000)
    assert data.decompress(gzip.compress(b"abc"), "ok", max_size=3) == b"abc"


# ----------------------------------------------------------- 7: one line, never a traceback


@pytest.mark.parametrize("argv,match", [
    (["train", "--seed", str(2 ** 63)], "--seed: expected an integer from 0 to 2**63 - 1"),
    (["summary", "--batch-size", str(10 ** 30)], "--batch-size: expected a positive integer"),
    (["train", "--batch-size", "10000000"], "--batch-size: expected a batch size from 1 to 60,000"),
    (["train", "--coordinator", "garbage", "--num-processes", "2", "--process-id", "0"],
     "--coordinator: expected HOST:PORT"),
    (["train", "--out", ""], "--out is empty"),
    (["train", "--lr", "1e-320"], "lr 1e-320 would not train"),
    (["train", "--lr", "1e39"], "must be a finite number >= 0 (in float32)"),
    (["train", "--epochs", str(10 ** 9)], "--epochs: expected a number of epochs"),
    (["evaluate", "--checkpoint", "README.md"], "not a readable checkpoint"),
])
def test_bad_values_exit_2_with_one_line(capsys, argv, match, tmp_path, monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    one_line_error(*run_cli(capsys, *argv)[::2], match)


@REAL_DATA
@pytest.mark.parametrize("out,match", [("FILE", "is a file, not a directory"),
                                       ("/dev/null", "is a file, not a directory"),
                                       ("FILE/run", "cannot create or open it as a directory"),
                                       ("/sys/jaxlenet-run", "cannot create or open it")])
def test_unusable_out_directories_exit_2_with_one_line(tmp_path, capsys, out, match):
    (tmp_path / "FILE").write_text("not a directory")
    out = out.replace("FILE", str(tmp_path / "FILE"))
    code, _, err = run_cli(capsys, "train", "--epochs", "1", "--limit", "64", "--out", out)
    one_line_error(code, err, match)
    assert not os.path.exists("/sys/jaxlenet-run")


@REAL_DATA
def test_a_metrics_file_that_is_a_directory_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--schedule", "constant", "--limit", "2048", "--no-plots", "--out", out]
    assert run_cli(capsys, "train", "--epochs", "1", *flags)[0] == 0
    (out / runs.METRICS).unlink()
    (out / runs.METRICS).mkdir()
    code, _, err = run_cli(capsys, "train", "--epochs", "2", "--resume", *flags)
    one_line_error(code, err, "metrics.jsonl is a directory; move it away")


def test_out_of_memory_is_one_line(capsys, monkeypatch):
    def exhausted(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 31 GB\n"
                                         "more lines")
    monkeypatch.setattr(train, "fit", exhausted)
    monkeypatch.setattr(data, "load_fashion_mnist", lambda *a, **k: small_dataset(64, 10))
    one_line_error(*run_cli(capsys, "train", "--out", "/tmp/never")[::2],
                   "out of memory running the compiled program; use a smaller --batch-size")


# --------------------------------------------------------------------------- 8: no hang


def test_an_absent_coordinator_is_waited_for_a_bounded_time():
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "jaxlenet", "train", "--coordinator",
                           "127.0.0.1:9", "--num-processes", "2", "--process-id", "1",
                           "--coordinator-timeout", "3", "--data-dir", "/nonexistent"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "XLA_FLAGS": ""})
    assert time.monotonic() - began < 90
    assert "waiting up to 3 s for the coordinator at 127.0.0.1:9" in done.stderr
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("jaxlenet: error: could not join the run at 127.0.0.1:9 as process 1 "
                           "of 2 within 3 s"), done.stderr
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- 9: smaller


@REAL_DATA
def test_a_data_dir_without_the_data_is_reported(tmp_path, capsys):
    for given, problem in ((tmp_path / "nope", "does not exist"),
                           (tmp_path / "file", "is not a directory"),
                           (tmp_path, "lacks train-images-idx3-ubyte.gz")):
        (tmp_path / "file").write_text("")
        warnings = []
        data.load_fashion_mnist(given, warn=warnings.append)
        assert len(warnings) == 1 and problem in warnings[0] and "using " in warnings[0]


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path):
    with pytest.raises(train.TrainingDiverged, match="no checkpoint was written.*smaller learning"):
        train.fit(train.Config(epochs=2, batch_size=32, lr=1e9, momentum=0.0),
                  small_dataset(256, 10), out_dir=tmp_path / "bad", **QUIET)
    assert not (tmp_path / "bad").exists()
    (tmp_path / "mine").mkdir()
    with pytest.raises(train.TrainingDiverged):
        train.fit(train.Config(epochs=2, batch_size=32, lr=1e9, momentum=0.0),
                  small_dataset(256, 10), out_dir=tmp_path / "mine", **QUIET)
    assert (tmp_path / "mine").is_dir() and not list((tmp_path / "mine").iterdir())


def test_partial_writes_a_killed_run_left_are_removed(tmp_path):
    dataset = small_dataset(n_train=64, n_test=10)
    config = train.Config(epochs=2, batch_size=32, schedule="constant")
    train.fit(train.Config(epochs=1, batch_size=32, schedule="constant"), dataset,
              out_dir=tmp_path, **QUIET)
    (tmp_path / "checkpoint.npz.x1y2.part").write_bytes(b"half a checkpoint")
    train.fit(config, dataset, out_dir=tmp_path, resume=True, **QUIET)
    assert not list(tmp_path.glob("*.part"))


def test_divergence_advice_names_the_setting_that_caused_it(tmp_path):
    with pytest.raises(train.TrainingDiverged, match="Weight decay 1e\\+30 is far too large"):
        train.fit(train.Config(epochs=1, batch_size=32, weight_decay=1e30),
                  small_dataset(256, 10), **QUIET)


@REAL_DATA
def test_an_interrupt_before_the_first_epoch_says_nothing_was_saved(tmp_path):
    out = tmp_path / "run"
    worker = subprocess.Popen([sys.executable, "-m", "jaxlenet", "train", "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(6)  # started, data loaded, first epoch under way
    worker.send_signal(2)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 130, err
    assert "interrupted; nothing was saved (no epoch had ended)" in err
    assert "intact" not in err and not out.exists()


# ------------------------------------------------------ 10: checkpoint contents are checked


def _rewritten(tmp_path, change_params=None, change_meta=None):
    """A run's checkpoint rewritten, with a valid digest, around damaged contents."""
    train.fit(train.Config(epochs=1, batch_size=32), small_dataset(64, 10), out_dir=tmp_path,
              **QUIET)
    path = tmp_path / runs.CHECKPOINT
    meta, _ = checkpoint.read(path)
    _, _, params, opt_state, key, _ = train.load_checkpoint(tmp_path)
    if change_params:
        params = jax.tree_util.tree_map(change_params, params)
    extra = {k: v for k, v in meta.items() if k not in ("format", "parts", "sha256")}
    checkpoint.save(path, {"params": params, "opt_state": opt_state, "key": key},
                    change_meta(extra) if change_meta else extra)
    return tmp_path


@pytest.mark.parametrize("change_params,change_meta,match", [
    (lambda a: a.astype(np.float64), None, "has dtype float64, the model expects float32"),
    (lambda a: np.full_like(a, np.nan), None, "NaN or infinite values"),
    (None, lambda m: {**m, "epoch": -3}, "epoch -3 is not between 1 and the run's"),
    (None, lambda m: {**m, "epoch": 99}, "epoch 99 is not between 1 and the run's"),
])
def test_checkpoint_contents_are_checked_on_load(tmp_path, capsys, change_params, change_meta,
                                                 match):
    run = _rewritten(tmp_path, change_params, change_meta)
    with pytest.raises(checkpoint.CheckpointError, match=match):
        train.load_checkpoint(run)
    one_line_error(*run_cli(capsys, "evaluate", "--checkpoint", run)[::2], match)


# ------------------------------------------------------------------ 11: as a new user would


def test_the_command_alone_prints_its_usage_and_version(capsys):
    code, out, _ = run_cli(capsys)
    assert code == 2 and "usage: jaxlenet" in out
    for command in ("train", "evaluate", "predict", "summary", "export", "bench"):
        assert command in out
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.startswith("jaxlenet 0.")


def test_train_help_says_what_resume_does(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "flags given must match it, except --epochs" in text
    assert "--recipe" in text


def test_the_package_describes_itself():
    import importlib.metadata

    import jaxlenet
    assert len(jaxlenet.__doc__.splitlines()) > 10 and "Quick start" in jaxlenet.__doc__
    meta = importlib.metadata.metadata("jaxlenet")
    assert meta["License-Expression"] == "MIT" or "MIT" in (meta["License"] or "")
    assert meta["Author"] or meta["Author-email"]
    assert os.path.exists(os.path.join(os.path.dirname(os.path.dirname(__file__)), "LICENSE"))


def test_bench_without_pytorch_says_how_to_get_the_comparison(capsys, monkeypatch):
    from jaxlenet import bench
    monkeypatch.setattr(bench, "_torch_available", lambda: False)
    assert cli.main(["bench", "--model", "lenet5", "--epochs", "1", "--limit", "256"]) == 0
    out = capsys.readouterr().out
    assert "PyTorch is not installed: no comparison" in out and "pip install torch" in out


# ------------------------------------------ a run touches only what it wrote; writers never destroy


def test_a_users_files_in_out_survive_a_run_that_ends_before_its_first_checkpoint(tmp_path):
    """Its own partial writes go; a user's *.part file, metrics.jsonl and plots stay."""
    out = tmp_path / "mine"
    out.mkdir()
    mine = {"notes.part": b"my notes", "metrics.jsonl": b"my metrics\n",
            "curves.png": b"my picture", "predictions.png": b"my other picture",
            "checkpoint.npz.k3j2.part": b"half a checkpoint a killed run left"}
    for name, content in mine.items():
        (out / name).write_bytes(content)
    with pytest.raises(train.TrainingDiverged):
        train.fit(train.Config(epochs=2, batch_size=32, lr=1e9, momentum=0.0),
                  small_dataset(256, 10), out_dir=out, **QUIET)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {
        name: content for name, content in mine.items() if not name.startswith("checkpoint")}


def test_written_files_follow_the_umask_or_keep_the_replaced_files_mode(tmp_path):
    from jaxlenet._files import atomic_write
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "new", b"x")
        assert (tmp_path / "new").stat().st_mode & 0o777 == 0o640
        (tmp_path / "kept").write_bytes(b"old")
        os.chmod(tmp_path / "kept", 0o604)
        atomic_write(tmp_path / "kept", b"new")
        assert (tmp_path / "kept").stat().st_mode & 0o777 == 0o604
    finally:
        os.umask(old)
    train.fit(train.Config(epochs=1, batch_size=32), small_dataset(64, 10),
              out_dir=tmp_path / "run", **QUIET)
    assert (tmp_path / "run" / runs.CHECKPOINT).stat().st_mode & 0o777 == 0o666 & ~old


def test_export_never_writes_over_a_checkpoint_or_a_file_that_is_not_regular(tmp_path, capsys):
    for name in ("run", "other"):
        train.fit(train.Config(epochs=1, batch_size=32), small_dataset(64, 10),
                  out_dir=tmp_path / name, **QUIET)
    before = {name: (tmp_path / name / runs.CHECKPOINT).read_bytes() for name in ("run", "other")}
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for fmt in ("stablehlo", "mxnet"):
        for out, match in ((tmp_path / "run" / runs.CHECKPOINT, "is the checkpoint being "
                            "exported; jaxlenet never writes over a run's checkpoint"),
                           (tmp_path / "other" / runs.CHECKPOINT, "is a checkpoint; jaxlenet"),
                           (fifo, "exists and is not a regular file")):
            code, _, err = run_cli(capsys, "export", "--checkpoint", tmp_path / "run", "--out",
                                   out, "--format", fmt)
            one_line_error(code, err, match)
    assert fifo.is_fifo()
    assert before == {name: (tmp_path / name / runs.CHECKPOINT).read_bytes()
                      for name in ("run", "other")}


def _peak_rss_mb_of(code: str) -> tuple[subprocess.CompletedProcess, float]:
    """Runs ``code`` in a fresh Python; (its result, its peak RSS in MB). The peak is the
    process's own (VmHWM): getrusage's ru_maxrss keeps the forking parent's across exec."""
    wrapped = ("import atexit, sys\natexit.register(lambda: print('PEAK', int(next(line.split()"
               "[1] for line in open('/proc/self/status') if line.startswith('VmHWM'))) / 1024, "
               "file=sys.stderr))\n" + code)
    done = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True,
                          timeout=120)
    peak = float(done.stderr.rsplit("PEAK ", 1)[1]) if "PEAK " in done.stderr else float("inf")
    return done, peak


def test_import_mxnet_checks_the_header_and_size_before_reading(tmp_path):
    """A 3 GB file (sparse) with no header, or a header and 3 GB behind it, and a FIFO: each
    refused at once, in one line, without reading it (peak memory measured)."""
    headless, oversized, fifo = tmp_path / "zeros.params", tmp_path / "big.params", tmp_path / "f"
    for path, head in ((headless, b"\0" * 8), (oversized, struct.pack("<QQQ", 0x112, 0, 1))):
        with open(path, "wb") as f:
            f.write(head)
            f.truncate(3 * 2 ** 30)
    os.mkfifo(fifo)
    for path, match in ((headless, "not an MXNet .params file"),
                        (oversized, "is more than the network's parameters can take"),
                        (fifo, "not a regular file")):
        done, peak = _peak_rss_mb_of(
            "from jaxlenet import cli; import sys\n"
            f"sys.exit(cli.main(['import-mxnet', {str(path)!r}, '--model', 'lenet', '--out', "
            f"{str(tmp_path / 'run')!r}]))")
        err = done.stderr.split("PEAK ")[0]
        assert done.returncode == 2 and err.count("\n") == 1 and match in err, err
        assert peak < 1000, peak  # the interpreter and JAX: far below the file's 3 GB
    assert not (tmp_path / "run").exists()


def test_a_params_size_that_overflows_int64_is_refused(tmp_path):
    """Dimensions whose product overflows int64 (np.prod would wrap to a small or negative size
    and move the reader backwards) are damage, named as such."""
    from jaxlenet import mxnet_params
    raw = (struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<IiI", 0xF993FAC9, 0, 2)
           + struct.pack("<2q", 2 ** 62, 4) + struct.pack("<iii", 1, 0, 0) + b"\0" * 64)
    with pytest.raises(mxnet_params.ParamsError, match="truncated"):
        mxnet_params.loads(raw, "crafted.params")


def test_names_from_a_params_file_are_escaped_before_printing(tmp_path, capsys):
    from jaxlenet import mxnet_params
    arrays = mxnet_params.read(pathlib.Path(__file__).parent / "fixtures" / "mxnet" /
                               "lenet.params")
    arrays["\x1b[2J\x1b[31mforged.weight"] = np.zeros((3, 3), np.float32)
    (tmp_path / "x.params").write_bytes(mxnet_params.dumps(arrays))
    code, _, err = run_cli(capsys, "import-mxnet", tmp_path / "x.params", "--model", "lenet",
                           "--out", tmp_path / "run")
    one_line_error(code, err, "'\\x1b[2J\\x1b[31mforged.weight'")
    assert "\x1b" not in err


# ----------------------------------------------------------------- images as a person sees them


def _garment():
    """A light 'trouser' on black, 28x28, not symmetric under rotation."""
    pixels = np.zeros((28, 28), np.uint8)
    pixels[2:26, 8:13] = 220
    pixels[2:26, 15:20] = 220
    pixels[2:6, 8:20] = 220
    return pixels


def test_transparency_is_composited_onto_white_before_greyscale(tmp_path):
    """The same picture as an opaque image and with transparency (RGBA, LA, a palette with a
    transparent colour) reads the same: what a person sees on a white page."""
    from PIL import Image
    seen = np.where(_garment() > 0, 40, 255).astype(np.uint8)  # dark garment on white
    Image.fromarray(seen).save(tmp_path / "opaque.png")
    alpha = np.where(_garment() > 0, 255, 0).astype(np.uint8)
    dark = np.full((28, 28), 40, np.uint8)
    Image.fromarray(np.stack([dark] * 3 + [alpha], -1), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.stack([dark, alpha], -1), "LA").save(tmp_path / "la.png")
    palette = Image.fromarray(np.where(_garment() > 0, 1, 0).astype(np.uint8), "P")
    palette.putpalette([0, 0, 0, 40, 40, 40] + [0] * 762)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png", transparency=0)
    want = images.load_images([tmp_path / "opaque.png"])
    for name in ("rgba.png", "la.png", "palette.png"):
        np.testing.assert_allclose(images.load_images([tmp_path / name]), want, atol=1 / 255,
                                   err_msg=name)
    assert want[0, 0, 14, 10] > 0.7 and want[0, 0, 0, 0] < 0.05  # inverted: light on black


@pytest.mark.parametrize("orientation,turn", [(3, 2), (6, 1), (8, 3)])
def test_a_photos_exif_orientation_is_applied(tmp_path, orientation, turn):
    """A phone stores the sensor's pixels and says how to turn them: the image is read turned,
    as every viewer shows it."""
    from PIL import Image
    upright = _garment()
    stored = np.rot90(upright, turn)  # what the camera wrote; EXIF says how to undo it
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).convert("RGB").save(tmp_path / "photo.jpg", exif=exif, quality=95)
    Image.fromarray(upright).convert("RGB").save(tmp_path / "upright.jpg", quality=95)
    got = images.load_images([tmp_path / "photo.jpg"], invert="no")
    want = images.load_images([tmp_path / "upright.jpg"], invert="no")
    assert np.abs(got - want).mean() < 0.03
    assert np.abs(images.load_images([tmp_path / "photo.jpg"], invert="no")
                  - np.rot90(want, 1, axes=(2, 3))).mean() > 0.1  # the turn matters


# ------------------------------------------------ crafted checkpoints: bounded memory, one line


def _with_members(raw: bytes, changes: dict, *, compress=None) -> bytes:
    """The zip archive ``raw`` (a checkpoint's bytes) with members replaced or added (name:
    bytes, stored or compressed as ``compress`` says) or removed (name: None)."""
    import io
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as old, zipfile.ZipFile(buffer, "w") as new:
        for info in old.infolist():
            if info.filename not in changes:
                new.writestr(info.filename, old.read(info), zipfile.ZIP_STORED)
        for name, member in changes.items():
            if member is not None:
                new.writestr(name, member, compress or zipfile.ZIP_STORED)
    return buffer.getvalue()


def _npy_header(descr, fortran, shape) -> bytes:
    """A .npy 1.0 header with these fields as written, valid or not (NumPy's own writer refuses
    the invalid ones)."""
    text = f"{{'descr': {descr!r}, 'fortran_order': {fortran!r}, 'shape': {shape!r}, }}"
    text += " " * (-(len(text) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def test_crafted_checkpoint_members_are_refused_before_they_are_inflated(tmp_path):
    """A member compressed 1000:1 (256 MB of zeros in ~250 KB), and one declaring 4 TB of
    float32 in 64 bytes: each is one line, exit 2, and the process never holds more than the
    interpreter and JAX (peak memory measured)."""
    import zipfile
    train.fit(train.Config(epochs=1, batch_size=32), small_dataset(64, 10),
              out_dir=tmp_path / "run", **QUIET)
    source = tmp_path / "run" / runs.CHECKPOINT
    zeros = np.zeros(2 ** 26, np.float32)
    cases = {
        "bomb": ({"params['conv0']['weight'].npy": _npy_header("<f4", False, zeros.shape)
                  + zeros.tobytes()}, zipfile.ZIP_DEFLATED,
                 "is compressed"),
        "huge": ({"params['conv0']['weight'].npy": _npy_header("<f4", False, (10 ** 12,))
                  + b"\0" * 64},
                 None, "declares float32 (1000000000000,)"),
    }
    for name, (members, compress, match) in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / runs.CHECKPOINT).write_bytes(
            _with_members(source.read_bytes(), members, compress=compress))
        assert (tmp_path / name / runs.CHECKPOINT).stat().st_size < source.stat().st_size + 2 ** 20
        done, peak = _peak_rss_mb_of(
            "from jaxlenet import cli; import sys\n"
            f"sys.exit(cli.main(['evaluate', '--checkpoint', {str(tmp_path / name)!r}]))")
        err = done.stderr.split("PEAK ")[0]
        assert done.returncode == 2 and err.count("\n") == 1 and match in err, err
        assert "Traceback" not in err and peak < 1000, peak


def test_deep_or_wrongly_typed_metadata_is_one_line_even_behind_a_good_checksum(tmp_path,
                                                                               capsys):
    """The checksum is not a signature: metadata that matches it is still checked."""
    import json
    train.fit(train.Config(epochs=1, batch_size=32), small_dataset(64, 10),
              out_dir=tmp_path / "run", **QUIET)
    meta, arrays = checkpoint.read(tmp_path / "run" / runs.CHECKPOINT)
    arrays = {k: v for k, v in arrays.items()}

    def with_meta(text: bytes, name: str):
        (tmp_path / name).mkdir()
        members = {"__meta__.npy": _npy_header("|u1", False, (len(text),)) + text}
        (tmp_path / name / runs.CHECKPOINT).write_bytes(
            _with_members((tmp_path / "run" / runs.CHECKPOINT).read_bytes(), members))
        return tmp_path / name

    deep = with_meta(b'{"history": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "deep")
    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", deep)
    one_line_error(code, err, "not a readable checkpoint")
    for number, changes in enumerate(({"epoch": "1"}, {"config": []}, {"config": {"model": 7}},
                                      {"spec": {"layers": "conv"}}, {"format": ["x"] * 10})):
        bad = {**meta, **changes}
        bad["sha256"] = checkpoint._digest(arrays, bad)
        run = with_meta(json.dumps(bad).encode(), f"typed{number}")
        code, _, err = run_cli(capsys, "evaluate", "--checkpoint", run)
        one_line_error(code, err, str(run))


# ----------------------------------------------- a full disk, absent platforms, closed streams


def _failing_fsync(monkeypatch, name: str, after: int = 0):
    """``os.fsync`` failing with ENOSPC (a full disk) on the writes of file ``name`` after the
    first ``after`` of them: what a full disk does to an atomic write."""
    import errno
    real, seen = os.fsync, []

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(name + "."):
            seen.append(fd)
            if len(seen) > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)


@REAL_DATA
def test_a_full_disk_names_the_file_and_the_intact_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    flags = ("--epochs", "3", "--limit", "512", "--no-plots", "--out", out)
    _failing_fsync(monkeypatch, runs.CHECKPOINT, after=1)  # epoch 2's checkpoint
    code, _, err = run_cli(capsys, "train", *flags)
    ends_in_one_line_error(code, err, f"cannot write {out / runs.CHECKPOINT}: No space left on "
                                      f"device; the checkpoint of epoch 1 in {out} is intact "
                                      f"(continue with --resume --out {out})")
    assert train.read_run(out)[1] == 1 and not list(out.glob("*.part"))
    monkeypatch.undo()
    _failing_fsync(monkeypatch, "curves.png")
    code, _, err = run_cli(capsys, "train", "--resume", "--out", out, "--no-plots")
    assert code in (0, cli.EXIT_AT_CHANCE) and train.read_run(out)[1] == 3, err
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "plots", "--epochs", "1",
                           "--limit", "256")
    ends_in_one_line_error(code, err, f"cannot write {tmp_path / 'plots' / 'curves.png'}: No "
                                      "space left on device; the checkpoint of the complete run "
                                      f"(1 epochs) in {tmp_path / 'plots'} is intact")
    assert not (tmp_path / "plots" / "curves.png").exists()
    (tmp_path / "x").mkdir()
    _failing_fsync(monkeypatch, "x.npz")
    one_line_error(*run_cli(capsys, "export", "--checkpoint", out, "--out",
                            tmp_path / "x" / "x.npz")[::2],
                   f"--out {tmp_path / 'x' / 'x.npz'}: cannot write (No space left on device)")
    assert not list((tmp_path / "x").iterdir())


def test_a_jax_platform_that_cannot_start_is_one_line():
    for platforms, match in (("cuda", "no such platform is installed"),
                             ("tpu,cpu", "Unable to initialize backend 'tpu'")):
        done = subprocess.run([sys.executable, "-m", "jaxlenet", "summary"], capture_output=True,
                              text=True, timeout=120, env={**os.environ,
                                                           "JAX_PLATFORMS": platforms})
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith(f"jaxlenet: error: JAX_PLATFORMS={platforms!r} names a "
                                      "platform JAX cannot start here") and match in done.stderr


def _jaxlenet(*argv, close=(), **kwargs):
    """The command in a fresh process with the standard streams ``close`` names closed (by the
    shell: a ``preexec_fn`` would run Python in a fork of this multithreaded process)."""
    closing = " ".join(f"{fd}>&-" for fd in close)
    return subprocess.run(["sh", "-c", f'exec "$@" {closing}', "sh", sys.executable, "-m",
                           "jaxlenet", *map(str, argv)], timeout=300, **kwargs)


def test_closed_standard_streams_keep_the_exit_status():
    """``>&-``: the output is discarded (and cannot land in a file the command opens on
    descriptor 1 or 2), the exit status still tells."""
    done = _jaxlenet("summary", close=(1,), stderr=subprocess.PIPE, text=True)
    assert done.returncode == 0 and done.stderr == ""
    done = _jaxlenet("summary", "--model", "nope", close=(2,), stdout=subprocess.PIPE, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert _jaxlenet("summary", close=(0, 1, 2)).returncode == 0


@REAL_DATA
def test_a_run_with_stdout_closed_writes_only_its_files(tmp_path):
    out = tmp_path / "run"
    done = _jaxlenet("train", "--epochs", "1", "--limit", "256", "--out", out, close=(1,),
                     stderr=subprocess.PIPE, text=True)
    assert done.returncode in (0, cli.EXIT_AT_CHANCE), done.stderr
    assert "Traceback" not in done.stderr and train.read_run(out)[1] == 1
    assert runs.read_metrics(out)[0]["epoch"] == 1  # no stray output in it


def test_a_closed_pipe_ends_quietly_with_141(tmp_path):
    """``jaxlenet ... | head``: once the reader has gone the command stops, without a message
    or a traceback, with the status a Unix tool that SIGPIPE ends gives (128 + 13)."""
    for argv in (["summary", "--model", "lenet5"],
                 ["train", "--epochs", "1", "--limit", "256", "--out", tmp_path / "run"]):
        command = subprocess.Popen([sys.executable, "-m", "jaxlenet", *map(str, argv)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        command.stdout.close()  # the reader is gone before the first line
        _, err = command.communicate(timeout=300)
        assert command.returncode == cli.EXIT_PIPE_CLOSED == 141, err
        assert b"Traceback" not in err and b"error" not in err, err
    assert not (tmp_path / "run").exists()  # it stopped before the first checkpoint


@pytest.mark.parametrize("argv,code,last", [
    (["summary"], 0, "forward FLOPs per image"),
    (["train", "--epochs", "-1"], 2, "jaxlenet: error: argument --epochs: expected"),
    pytest.param(["train", "--lr", "1e9", "--momentum", "0", "--epochs", "2", "--limit", "256",
                  "--no-plots"], cli.EXIT_DIVERGED,
                 "jaxlenet: diverged: epoch 1: the training loss is", marks=REAL_DATA),
    pytest.param(["train", "--lr", "5", "--epochs", "1", "--limit", "2048", "--no-plots"],
                 cli.EXIT_AT_CHANCE, "jaxlenet: failed: the run ended at chance level",
                 marks=REAL_DATA),
])
def test_each_exit_status_of_the_command_end_to_end(tmp_path, argv, code, last):
    """The installed command's statuses (docs/robustness.md), through the process's exit: 0, 2,
    3 diverged, 4 at chance (130 and 141 are tested where interrupts and pipes are)."""
    if argv[0] == "train":
        argv = argv + ["--out", str(tmp_path / "run")]
    done = subprocess.run([sys.executable, "-m", "jaxlenet", *argv], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    assert last in (done.stderr if code else done.stdout).strip().splitlines()[-1], done.stderr
    if code == cli.EXIT_DIVERGED:
        assert not (tmp_path / "run").exists()  # diverged in its first epoch: nothing kept

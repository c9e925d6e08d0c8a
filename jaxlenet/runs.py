"""A run directory: what a training run writes (checkpoint, metrics, plots), and the lock that
keeps two runs from writing into one directory.

The lock is taken before anything in the directory is looked at, so a run that starts while
another finishes sees the finished run and never overwrites it. It is an ``flock`` on the
directory itself, released by the OS if the process dies; a run that ends before its first
checkpoint leaves no directory behind (if it made it) and no files of its own."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
from collections.abc import Callable

from jaxlenet import checkpoint
from jaxlenet._files import atomic_write, remove_partial_writes

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
PLOTS = ("curves.png", "predictions.png")


class RunLocked(RuntimeError):
    """Another process is training into the same run directory."""


class RunExists(ValueError):
    """The run directory holds a run already and ``resume`` was not asked for."""


@contextlib.contextmanager
def open_run(out_dir, *, resume: bool, describe: Callable[[pathlib.Path], str] | None = None):
    """Locks ``out_dir`` (made if need be) for the life of a run and yields it as a Path.

    Refuses a directory that holds a checkpoint unless ``resume`` (``RunExists``, its message
    from ``describe(out)`` if given), and one without a checkpoint if ``resume``
    (``CheckpointError``). Partial files that a killed write of a run's file left behind are
    removed (no other ``*.part`` file). If the run ends without a checkpoint, the files it wrote
    go (none that were there before it), and so does the directory if this call made it."""
    if out_dir is None or str(out_dir) == "":
        raise ValueError("the run directory (--out) is empty: name a directory")
    out = pathlib.Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory")
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot create or open it as a directory "
                         f"({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise
            raise RunLocked(f"another run is training into {out}") from None
        if not os.access(out, os.W_OK):
            raise ValueError(f"--out {out}: not writable")
        remove_partial_writes(out, names=(CHECKPOINT, METRICS, *PLOTS))
        for name in (CHECKPOINT, METRICS):
            if (out / name).is_dir():
                raise ValueError(f"{out / name} is a directory; move it away so the run can "
                                 "write there")
        has_run = (out / CHECKPOINT).exists()
        if has_run and not resume:
            raise RunExists(describe(out) if describe else
                            f"{out} already holds a run; pass --resume to continue it or choose "
                            "another --out")
        if resume and not has_run:
            raise checkpoint.CheckpointError(f"--resume: no checkpoint in {out}")
        found = {name for name in (METRICS, *PLOTS) if os.path.lexists(out / name)}
        try:
            yield out
        finally:
            if not (out / CHECKPOINT).exists():
                for name in {METRICS, *PLOTS} - found:  # only what this run wrote
                    (out / name).unlink(missing_ok=True)
                if made:
                    with contextlib.suppress(OSError):
                        out.rmdir()
    finally:
        os.close(handle)


def read_metrics(out_dir) -> list[dict]:
    """The per-epoch records in ``out_dir/metrics.jsonl`` ([] without one). Raises ValueError if
    it is not one JSON object a line."""
    path = pathlib.Path(out_dir) / METRICS
    if not path.exists():
        return []
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_metrics(out_dir, history: list[dict]) -> None:
    atomic_write(pathlib.Path(out_dir) / METRICS,
                 "".join(json.dumps(r) + "\n" for r in history).encode())


def metrics_match(out_dir, history: list[dict]) -> bool:
    """Whether ``out_dir/metrics.jsonl`` holds exactly ``history``."""
    try:
        return read_metrics(out_dir) == history
    except (ValueError, UnicodeDecodeError):
        return False


def load_history(out_dir, *, warn: Callable[[str], None] | None = None) -> list[dict]:
    """The per-epoch records of the run in ``out_dir``, from its checksummed checkpoint. A
    ``metrics.jsonl`` that disagrees with them (edited, truncated, unreadable, or from later
    epochs that never reached a checkpoint) is reported through ``warn``, if given."""
    meta, _ = checkpoint.read(pathlib.Path(out_dir) / CHECKPOINT)
    history = meta.get("history", [])
    if not metrics_match(out_dir, history) and warn is not None:
        warn(f"jaxlenet: {pathlib.Path(out_dir) / METRICS} does not match the checkpoint's "
             f"record of {len(history)} epoch(s); rewriting it from the checkpoint")
    return history

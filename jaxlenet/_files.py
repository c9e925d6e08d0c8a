"""Where jaxlenet keeps files, and writing them so that a crash never leaves a partial one."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
import time


def user_cache() -> pathlib.Path:
    """jaxlenet's directory in the user cache: ``$XDG_CACHE_HOME/jaxlenet``, default
    ``~/.cache/jaxlenet``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "jaxlenet"


def atomic_write(target, data: bytes) -> None:
    """Writes ``data`` to a temporary file beside ``target``, fsyncs it, then renames it over
    ``target``: readers see the old file or the new one, never a half-written one."""
    target = pathlib.Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def remove_partial_writes(directory, *, older_than: float = 0.0) -> None:
    """Removes the temporary files ``atomic_write`` leaves in ``directory`` when a process is
    killed mid-write, if they are at least ``older_than`` seconds old (a younger one may be
    another process's write in progress)."""
    now = time.time()
    for part in pathlib.Path(directory).glob("*.part"):
        with contextlib.suppress(OSError):
            if now - part.stat().st_mtime >= older_than:
                part.unlink()

"""Where jaxlenet keeps files, and writing them so that a crash never leaves a partial one."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import pathlib
import stat
import tempfile
import time


def user_cache() -> pathlib.Path:
    """jaxlenet's directory in the user cache: ``$XDG_CACHE_HOME/jaxlenet``, default
    ``~/.cache/jaxlenet``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "jaxlenet"


def atomic_write(target, data: bytes) -> None:
    """Writes ``data`` to a temporary file beside ``target``, fsyncs it, then renames it over
    ``target``: readers see the old file or the new one, never a half-written one. The file gets
    the mode of the one it replaces, or the umask's; a ``target`` that exists and is not a
    regular file (a device, a FIFO, a directory) is refused with ``IsADirectoryError`` or
    ``FileExistsError``, never replaced. Any ``OSError`` names ``target`` (a full disk: "No
    space left on device"), and ``target`` is as it was."""
    target = pathlib.Path(target)
    mode = _mode_for(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        pathlib.Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # named by the file the user knows, not the temporary
            raise type(exc)(exc.errno, exc.strerror or str(exc), str(target)) from exc
        raise


def _mode_for(target: pathlib.Path) -> int:
    """The permission bits a new ``target`` gets: an existing regular file's, or what the umask
    leaves of 0o666 (``mkstemp`` alone gives 0o600)."""
    try:
        status = target.stat()
    except FileNotFoundError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask
    if stat.S_ISDIR(status.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(target))
    if not stat.S_ISREG(status.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a regular file (jaxlenet "
                              "replaces only regular files)", str(target))
    return stat.S_IMODE(status.st_mode)


def remove_partial_writes(directory, *, older_than: float = 0.0, names=None) -> None:
    """Removes the temporary files ``atomic_write`` leaves in ``directory`` when a process is
    killed mid-write, if they are at least ``older_than`` seconds old (a younger one may be
    another process's write in progress); with ``names``, only those of files so named (a
    user's own ``*.part`` files stay)."""
    now = time.time()
    patterns = [f"{glob.escape(name)}.*.part" for name in names] if names else ["*.part"]
    for part in (part for pattern in patterns for part in pathlib.Path(directory).glob(pattern)):
        with contextlib.suppress(OSError):
            if now - part.stat().st_mtime >= older_than:
                part.unlink()

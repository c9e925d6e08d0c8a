"""Fashion-MNIST from the real IDX files: parsing, verification, the search path, download, batches.

Where the four files are looked for, in order: ``data_dir``, ``$JAXLENET_DATA``, the user cache
(``$XDG_CACHE_HOME/jaxlenet/fashion-mnist``, default ``~/.cache/...``), and Debian's
``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``). If none has them, they
are downloaded into the cache. Every file is verified by the SHA-256 of its decompressed payload
(Debian recompresses the .gz files; the payload is identical to the official one).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pathlib
import sys
import time
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxlenet._files import atomic_write, remove_partial_writes, user_cache

CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle boot")

# name -> (file, SHA-256 of the decompressed IDX payload, shape)
FILES = {
    "train_images": ("train-images-idx3-ubyte.gz",
                     "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                     (60000, 28, 28)),
    "train_labels": ("train-labels-idx1-ubyte.gz",
                     "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", (60000,)),
    "test_images": ("t10k-images-idx3-ubyte.gz",
                    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                    (10000, 28, 28)),
    "test_labels": ("t10k-labels-idx1-ubyte.gz",
                    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", (10000,)),
}

MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
SYSTEM_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DataError(ValueError):
    """A dataset file is missing, unreadable, corrupt or not what it should be."""


# -------------------------------------------------------------------------------------- IDX files


def read_payload(path, *, max_size: int | None = None) -> bytes:
    """The file's bytes, decompressed if it is gzip (by its magic bytes, not its name). With
    ``max_size``, a file whose payload is larger is refused before more than ``max_size`` bytes
    are read or decompressed (a gzip bomb costs nothing)."""
    path = pathlib.Path(path)
    try:
        size = path.stat().st_size
        if max_size is not None and size > _largest_file(max_size):
            raise DataError(f"{path}: {size:,} bytes, more than the {max_size:,} expected")
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return decompress(raw, str(path), max_size=max_size)


def decompress(raw: bytes, name: str, *, max_size: int | None = None) -> bytes:
    """``raw`` gunzipped if it is gzip, as it is otherwise; refused (``DataError``) when the
    payload is larger than ``max_size``, which is then all that is decompressed."""
    if raw[:2] != b"\x1f\x8b":
        payload = raw
    else:
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
                payload = stream.read(-1 if max_size is None else max_size + 1)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{name}: corrupt or truncated gzip data ({exc})") from None
    if max_size is not None and len(payload) > max_size:
        raise DataError(f"{name}: holds more than the {max_size:,} bytes expected")
    return payload


def parse_idx(payload: bytes, name: str = "IDX data") -> np.ndarray:
    """Parses IDX bytes: magic ``00 00 <type> <ndim>``, ndim big-endian uint32 dimensions, data."""
    if len(payload) < 4 or payload[:2] != b"\x00\x00":
        raise DataError(f"{name}: not an IDX file (magic number {payload[:4].hex() or 'missing'})")
    type_code, ndim = payload[2], payload[3]
    if type_code not in _IDX_TYPES:
        raise DataError(f"{name}: unknown IDX element type 0x{type_code:02x}")
    if ndim == 0 or len(payload) < 4 + 4 * ndim:
        raise DataError(f"{name}: IDX header declares {ndim} dimensions but is truncated")
    shape = tuple(int(d) for d in np.frombuffer(payload, ">u4", ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    actual = len(payload) - 4 - 4 * ndim
    if actual != expected:
        raise DataError(f"{name}: IDX header declares shape {shape} ({expected} bytes) but the "
                        f"file holds {actual} bytes of data")
    values = np.frombuffer(payload, dtype, offset=4 + 4 * ndim).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def read_idx(path) -> np.ndarray:
    """Reads an IDX file (.gz or uncompressed), e.g. any MNIST-format file."""
    return parse_idx(read_payload(path), str(path))


def sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


# --------------------------------------------------------------------------------- where, and get


def cache_dir() -> pathlib.Path:
    return user_cache() / "fashion-mnist"


def search_path(data_dir=None) -> list[pathlib.Path]:
    """Directories searched for the four files, in order."""
    dirs = [data_dir, os.environ.get("JAXLENET_DATA"), cache_dir(), SYSTEM_DIR]
    return [pathlib.Path(d).expanduser() for d in dirs if d]


def _find(directory: pathlib.Path, filename: str) -> pathlib.Path | None:
    for candidate in (filename, filename[:-3]):  # .gz or uncompressed
        if (directory / candidate).is_file():
            return directory / candidate
    return None


def locate(data_dir=None) -> pathlib.Path | None:
    """The first directory on the search path that holds all four files, or None."""
    for directory in search_path(data_dir):
        if all(_find(directory, f) for f, _, _ in FILES.values()):
            return directory
    return None


def download(directory=None, *, mirrors=None, timeout: float = 30.0, retries: int = 3,
             progress: bool | None = None) -> pathlib.Path:
    """Downloads the four files into ``directory`` (default: the cache), each verified before it is
    atomically renamed into place; a file already there and valid is kept, a corrupt one replaced.
    Tries each mirror (default: ``$JAXLENET_MIRROR``, comma-separated base URLs, else
    ``MIRRORS``) ``retries`` times with a ``timeout`` in seconds per request."""
    if mirrors is None:
        mirrors = tuple(filter(None, os.environ.get("JAXLENET_MIRROR", "").split(","))) or MIRRORS
    directory = pathlib.Path(directory) if directory else cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    remove_partial_writes(directory, older_than=3600)  # a younger one may be another download's
    progress = sys.stderr.isatty() if progress is None else progress
    for filename, digest, shape in FILES.values():
        target = directory / filename
        size = payload_size(shape)
        if target.is_file():
            try:
                if sha256(read_payload(target, max_size=size)) == digest:
                    continue
            except DataError:
                pass
        errors = []
        for mirror in mirrors:
            for attempt in range(retries):
                try:
                    raw = _fetch(mirror + filename, timeout, progress,
                                 max_bytes=_largest_file(size))
                    payload = decompress(raw, mirror + filename, max_size=size)
                    if sha256(payload) != digest:
                        raise DataError(f"checksum mismatch (SHA-256 {sha256(payload)[:12]}..., "
                                        f"expected {digest[:12]}...)")
                    atomic_write(target, raw)
                    break
                except (OSError, EOFError, zlib.error, DataError) as exc:
                    errors.append(f"{mirror + filename}: {getattr(exc, 'reason', None) or exc}")
                    if attempt + 1 < retries:
                        time.sleep(min(2.0 ** attempt, 5.0) * 0.1)
            else:
                continue
            break
        else:
            raise DataError(f"could not download {filename}: " + "; ".join(errors[-len(mirrors):])
                            + ". Offline? Install Debian's package (apt-get install "
                            "dataset-fashion-mnist) or pass data_dir / --data-dir")
    return directory


def _fetch(url: str, timeout: float, progress: bool, max_bytes: int) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0)
        chunks, done = [], 0
        while chunk := response.read(1 << 16):
            chunks.append(chunk)
            done += len(chunk)
            if done > max_bytes:
                raise DataError(f"the server sent more than the {max_bytes:,} bytes expected")
            if progress:
                share = f"{100 * done / total:5.1f}%" if total else f"{done >> 10} KiB"
                print(f"\rdownloading {url.rsplit('/', 1)[-1]}: {share}", end="", file=sys.stderr)
        if progress:
            print(file=sys.stderr)
    if total and done != total:
        raise DataError(f"download ended after {done} of {total} bytes")
    return b"".join(chunks)


# ------------------------------------------------------------------------------------------- load


def load_fashion_mnist(data_dir=None, *, allow_download: bool = True,
                       warn: Callable[[str], None] | None = None):
    """``(train_images, train_labels), (test_images, test_labels)``: uint8 images (N, 28, 28) and
    int32 labels in [0, 9], 60,000 and 10,000 of them, each file verified by checksum.

    A ``data_dir`` that does not hold the four files is reported through ``warn`` (default:
    ``warnings.warn``) when another copy is used instead."""
    directory = locate(data_dir)
    if data_dir is not None and directory != pathlib.Path(data_dir).expanduser():
        problem = _missing_files(pathlib.Path(data_dir).expanduser())
        if directory is not None or allow_download:
            instead = str(directory) if directory is not None else "a download"
            (warn or warnings.warn)(f"jaxlenet: --data-dir {data_dir} {problem}; using "
                                    f"{instead} instead")
    if directory is None:
        looked = ", ".join(str(d) for d in search_path(data_dir))
        if not allow_download:
            raise DataError(f"Fashion-MNIST not found (looked in {looked}); install Debian's "
                            "package (apt-get install dataset-fashion-mnist) or download it")
        directory = download()
    arrays = {}
    for name, (filename, digest, shape) in FILES.items():
        path = _find(directory, filename)
        payload = read_payload(path, max_size=payload_size(shape))
        if sha256(payload) != digest:
            if directory == cache_dir():  # ours to repair
                path.unlink()
                download(directory)
                return load_fashion_mnist(data_dir, allow_download=allow_download,
                                          warn=warn)
            raise DataError(f"{path}: checksum mismatch: the decompressed payload's SHA-256 is "
                            f"{sha256(payload)}, expected {digest}")
        array = parse_idx(payload, str(path))
        if array.shape != shape:
            raise DataError(f"{path}: shape {array.shape}, expected {shape}")
        arrays[name] = array
    return ((arrays["train_images"], _labels(arrays["train_labels"], "train labels")),
            (arrays["test_images"], _labels(arrays["test_labels"], "test labels")))


def payload_size(shape: tuple[int, ...]) -> int:
    """Bytes of an IDX file of uint8 values of ``shape``: magic, dimensions, data."""
    return 4 + 4 * len(shape) + math.prod(shape)


def _largest_file(payload: int) -> int:
    """The most bytes a file holding ``payload`` bytes, gzipped or not, can take: gzip never
    makes data much larger."""
    return payload + payload // 100 + 1024


def _missing_files(directory: pathlib.Path) -> str:
    if not directory.exists():
        return "does not exist"
    if not directory.is_dir():
        return "is not a directory"
    missing = [f for f, _, _ in FILES.values() if not _find(directory, f)]
    return f"lacks {', '.join(missing)}"


def _labels(labels: np.ndarray, name: str) -> np.ndarray:
    if labels.ndim != 1 or labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise DataError(f"{name}: values must lie in [0, {len(CLASS_NAMES) - 1}]")
    return labels.astype(np.int32)


# ---------------------------------------------------------------------------------------- batches


def to_float_nchw(images) -> np.ndarray:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) in [0, 1], the tutorial's ``ToTensor``."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W), got shape {images.shape}")
    return (images.astype(np.float32) / 255.0)[:, None]


def batch_indices(key, num_examples: int, batch_size: int, *, shuffle: bool = True):
    """Example indices for one epoch, shaped (num_batches, batch_size), and a same-shaped mask.

    Every example appears exactly once: the last partial batch is kept, padded with index 0 whose
    mask is False, so sums weighted by the mask count each example once. ``key`` (a
    ``jax.random`` key) fixes the order when ``shuffle``; jit-able."""
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} must be at least 1")
    num_batches = -(-num_examples // batch_size)
    order = jax.random.permutation(key, num_examples) if shuffle else jnp.arange(num_examples)
    padding = num_batches * batch_size - num_examples
    order = jnp.concatenate([order, jnp.zeros(padding, order.dtype)])
    mask = jnp.arange(num_batches * batch_size) < num_examples
    return order.reshape(num_batches, batch_size), mask.reshape(num_batches, batch_size)

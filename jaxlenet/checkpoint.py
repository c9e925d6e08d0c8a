"""Checkpoints: one ``.npz`` holding every array of a pytree by its path, plus JSON metadata with a
SHA-256 over the metadata and the arrays, written atomically (temporary file, fsync, rename).

A truncated or tampered file raises ``CheckpointError``; it is never loaded silently."""

from __future__ import annotations

import hashlib
import io
import json
import math
import pathlib
import zipfile

import jax
import numpy as np

from jaxlenet._files import atomic_write

FORMAT = "jaxlenet-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, tampered with, or does not fit the model."""


def flatten(tree) -> dict[str, np.ndarray]:
    """Every array of ``tree`` by its path (``"['conv0']['weight']"``)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _digest(arrays: dict[str, np.ndarray], header: dict) -> str:
    """SHA-256 over the metadata (but this digest) and each array's name, dtype, shape and data."""
    h = hashlib.sha256(json.dumps({k: v for k, v in header.items() if k != "sha256"},
                                  sort_keys=True).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def save(path, state: dict, meta: dict) -> None:
    """Writes ``state`` (a dict of pytrees, e.g. params and optimiser state) and JSON-able ``meta``
    to ``path`` atomically: a crash leaves the previous checkpoint, never a half-written one."""
    path = pathlib.Path(path)
    arrays = {f"{part}{key}": value for part, tree in state.items()
              for key, value in flatten(tree).items()}
    header = {"format": FORMAT, "parts": sorted(state), **meta}
    header["sha256"] = _digest(arrays, header)
    buffer = io.BytesIO()
    np.savez(buffer, __meta__=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
    atomic_write(path, buffer.getvalue())


def looks_like_one(path) -> bool:
    """Whether ``path`` is a file that looks like a jaxlenet checkpoint (a zip archive holding
    the metadata member), damaged or not: a file no writer of jaxlenet's may replace."""
    try:
        with zipfile.ZipFile(path) as archive:
            return "__meta__.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def read(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays by path) after checking the format and the checksum."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a readable checkpoint: not a whole .npz archive "
                              "(truncated, or another kind of file)")
    try:
        _check_members(path)
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
        if not isinstance(meta, dict):
            raise CheckpointError(f"{path}: not a readable checkpoint (its metadata is not a "
                                  "record)")
        digest = _digest(arrays, meta)
    except CheckpointError:
        raise
    except Exception as exc:  # zipfile's and NumPy's parsers raise many types on crafted bytes
        # (struct.error, tokenize.TokenError, SyntaxError, OverflowError, ...): all are "damaged"
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {str(meta.get('format'))[:80]!r}")
    if digest != meta.get("sha256"):
        raise CheckpointError(f"{path}: checksum mismatch: the checkpoint was modified or damaged")
    return meta, arrays


def _check_members(path) -> None:
    """Every member of the archive as ``save`` writes it, read from the zip directory and each
    array's header before anything is inflated or allocated: stored, not compressed (a few MB
    must not inflate to GBs), and holding exactly the bytes its declared shape needs (a shape
    that claims more would be allocated whole). So reading costs at most the file's size."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(f"{path}: member {info.filename[:80]!r} is compressed; "
                                      "jaxlenet's checkpoints store their arrays as they are")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version not in ((1, 0), (2, 0)):
                    raise CheckpointError(f"{path}: member {info.filename[:80]!r} is in .npy "
                                          f"format {version}, which save never writes")
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(member)
                needed = math.prod(shape) * dtype.itemsize
                if dtype.hasobject or info.file_size != member.tell() + needed:
                    raise CheckpointError(
                        f"{path}: member {info.filename[:80]!r} declares {dtype} {shape}, "
                        f"which its {info.file_size:,} bytes do not hold")


def restore(arrays: dict[str, np.ndarray], part: str, template, *, finite: bool = False):
    """Rebuilds pytree ``part`` with the structure of ``template`` (arrays, or anything with a
    shape and dtype such as ``jax.ShapeDtypeStruct``); every array must have its template's shape
    and dtype exactly (nothing is cast), and with ``finite`` hold no NaN or infinity."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    restored = []
    for path, leaf in leaves:
        key = part + jax.tree_util.keystr(path)
        if key not in arrays:
            raise CheckpointError(f"checkpoint lacks {key}: it was written for another model or "
                                  "optimiser")
        value, expected = arrays[key], leaf
        if value.shape != expected.shape:
            raise CheckpointError(f"checkpoint {key} has shape {value.shape}, the model expects "
                                  f"{expected.shape}")
        if value.dtype != expected.dtype:
            raise CheckpointError(f"checkpoint {key} has dtype {value.dtype}, the model expects "
                                  f"{expected.dtype}")
        if finite and np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise CheckpointError(f"checkpoint {key} holds NaN or infinite values: the run it "
                                  "came from had diverged")
        restored.append(value)
    return jax.tree_util.tree_unflatten(treedef, restored)

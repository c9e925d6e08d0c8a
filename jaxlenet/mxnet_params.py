"""MXNet's ``.params`` files (``nd.save``, Gluon's ``save_parameters``), read and written with
NumPy alone, and their mapping onto jaxlenet's LeNets.

The format (MXNet 1.x, little-endian): uint64 0x112, uint64 0, uint64 count, then each array:
uint32 0xF993FAC9, int32 storage type (0: dense), uint32 ndim, int64 dims, int32 device type,
int32 device id, int32 dtype code, the data; then uint64 count of names and each name as uint64
length and bytes (no names for a saved list)."""

from __future__ import annotations

import math
import os
import re
import stat
import struct

import jax
import numpy as np

_LIST_MAGIC = 0x112
_ARRAY_MAGIC = 0xF993FAC9
_DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8,
           6: np.int64}
_CODES = {np.dtype(dtype): code for code, dtype in _DTYPES.items()}
_CPU = 1


class ParamsError(ValueError):
    """A file is not an MXNet ``.params`` file, is damaged, or does not fit the model."""


def loads(raw: bytes, name: str = "the file") -> dict[str, np.ndarray]:
    """The arrays of an ``nd.save`` file's bytes, by name in file order (``"0"``, ``"1"``, ...
    for a saved list)."""
    if raw[:8] != struct.pack("<Q", _LIST_MAGIC):
        raise ParamsError(f"{name}: not an MXNet .params file (no nd.save header)")
    reader = _Reader(raw, name)
    if reader.unpack("<QQ")[1] != 0:
        raise ParamsError(f"{name}: not an MXNet .params file (no nd.save header)")
    count, = reader.unpack("<Q")
    if count > len(raw):
        raise ParamsError(f"{name}: damaged (it claims {count:,} arrays)")
    arrays = [_read_array(reader, name, i) for i in range(count)]
    names_count, = reader.unpack("<Q")
    if names_count not in (0, count):
        raise ParamsError(f"{name}: damaged ({names_count} names for {count} arrays)")
    names = [reader.take(reader.unpack("<Q")[0]).decode("utf-8", "replace")
             for _ in range(names_count)] or [str(i) for i in range(count)]
    if reader.offset != len(raw):
        raise ParamsError(f"{name}: {len(raw) - reader.offset} bytes after the last name")
    return dict(zip(names, arrays))


def dumps(arrays: dict[str, np.ndarray]) -> bytes:
    """``nd.save``'s bytes for ``arrays`` (dense, on the CPU), names in the dict's order."""
    parts = [struct.pack("<QQQ", _LIST_MAGIC, 0, len(arrays))]
    for value in arrays.values():
        value = np.ascontiguousarray(value)
        if value.dtype not in _CODES:
            raise ParamsError(f"dtype {value.dtype} has no MXNet code")
        parts.append(struct.pack(f"<IiI{value.ndim}q", _ARRAY_MAGIC, 0, value.ndim, *value.shape))
        parts.append(struct.pack("<iii", _CPU, 0, _CODES[value.dtype]))
        parts.append(value.astype(value.dtype.newbyteorder("<")).tobytes())
    parts.append(struct.pack("<Q", len(arrays)))
    for key in arrays:
        encoded = key.encode()
        parts.append(struct.pack("<Q", len(encoded)) + encoded)
    return b"".join(parts)


class _Reader:
    def __init__(self, raw: bytes, name: str):
        self.raw, self.name, self.offset = raw, name, 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.offset + size > len(self.raw):
            raise ParamsError(f"{self.name}: truncated (it ends at byte {len(self.raw):,}, "
                              f"inside what starts at byte {self.offset:,})")
        self.offset += size
        return self.raw[self.offset - size:self.offset]

    def unpack(self, layout: str):
        return struct.unpack(layout, self.take(struct.calcsize(layout)))


def _read_array(reader: _Reader, name: str, index: int) -> np.ndarray:
    magic, storage = reader.unpack("<Ii")
    if magic != _ARRAY_MAGIC:
        raise ParamsError(f"{name}: array {index} has an unknown header (0x{magic:08x}); only "
                          "MXNet 1.x's format is read")
    if storage != 0:
        raise ParamsError(f"{name}: array {index} is sparse; only dense arrays are read")
    ndim, = reader.unpack("<I")
    if ndim > 32:
        raise ParamsError(f"{name}: array {index} is damaged ({ndim} dimensions)")
    shape = reader.unpack(f"<{ndim}q")
    if ndim == 0:
        return np.zeros((0,), np.float32)
    _, _, code = reader.unpack("<iii")
    if code not in _DTYPES or any(n < 0 for n in shape):
        raise ParamsError(f"{name}: array {index} is damaged (dtype code {code}, shape {shape})")
    dtype = np.dtype(_DTYPES[code]).newbyteorder("<")
    data = reader.take(math.prod(shape) * dtype.itemsize)  # Python ints: no overflow
    return np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def read(path, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """``loads`` of the file at ``path``: a regular file (a FIFO or a device would be read
    without end), whose header is checked before the rest is read, and, with ``max_bytes``
    (``size_bound``), no larger than that."""
    try:
        # Opened without blocking: a FIFO with no writer would otherwise wait for one forever.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb", buffering=0) as f:
            status = os.fstat(f.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise ParamsError(f"{path}: not a regular file")
            head = f.read(8)
            if head != struct.pack("<Q", _LIST_MAGIC):
                raise ParamsError(f"{path}: not an MXNet .params file (no nd.save header)")
            if max_bytes is not None and status.st_size > max_bytes:
                raise ParamsError(f"{path}: {status.st_size:,} bytes is more than the network's "
                                  f"parameters can take ({max_bytes:,}): another network's file?")
            raw = head + f.read(status.st_size - len(head))
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return loads(raw, str(path))


def size_bound(model) -> int:
    """The largest ``.params`` file ``model``'s parameters can be: their data in float64 (the
    widest dtype MXNet writes), each array's header, and a name of up to 4 KiB each."""
    shapes = _template(model)
    arrays = [shape for parts in shapes.values() for shape in parts.values()]
    return 24 + sum(8 * math.prod(shape) + 64 + 8 * len(shape) + 4096 + 8 for shape in arrays)


# ------------------------------------------------------------------ jaxlenet's networks


def check_gluon(model) -> None:
    """Raises ``ParamsError`` unless ``model``'s network is one Gluon's ``nn.Sequential`` can
    express layer for layer (Conv2D, MaxPool2D/AvgPool2D, Dense, Activation, Flatten), so that
    its ``.params`` names and shapes are Gluon's."""
    if model.spec is None:
        raise ParamsError(f"the network {model.name!r} is defined in code; only a network "
                          "given as a spec maps onto Gluon's layers")
    for layer in model.spec["layers"]:
        if layer["kind"] == "pool" and layer["pool"] not in ("max", "avg"):
            raise ParamsError(f"{model.name}'s layer {layer['name']} is a {layer['pool']} pool, "
                              "which Gluon has no layer for (MaxPool2D and AvgPool2D only)")


def to_params(arrays: dict[str, np.ndarray], model, name: str = "the file") -> dict:
    """jaxlenet's parameter tree for ``model`` (``models.build``) from a ``.params`` file's
    arrays, whatever their names: Gluon's (``0.weight``), prefixed (``lenet0_conv0_weight``,
    ``arg:conv0_weight``). Each layer's weight is found by its shape (a LeNet's are all
    different; a network with two of one shape takes Gluon's ``index.weight`` names in order), then
    its bias beside it; anything missing, left over or mis-shaped is refused."""
    groups = {}
    for key, value in arrays.items():
        match = re.fullmatch(r"(?:arg:|aux:)?(.*?)[._](weight|bias)", key)
        if match is None:
            raise ParamsError(f"{name}: {key!r} is not a layer's weight or bias")
        groups.setdefault(match.group(1), {})[match.group(2)] = (key, value)
    template = _template(model)
    params, used = {}, set()
    for layer in (name for name, _ in model.layers if name in template):
        shapes = template[layer]
        found = [g for g, parts in groups.items() if g not in used
                 and "weight" in parts and parts["weight"][1].shape == shapes["weight"]]
        if not found:
            held = ", ".join(f"{parts['weight'][0]!r} {parts['weight'][1].shape}"
                             for parts in groups.values() if "weight" in parts)
            raise ParamsError(f"{name}: {model.name}'s {layer} needs a weight of shape "
                              f"{shapes['weight']}; the file holds {held or 'no weights'} "
                              f"(another model's parameters?)")
        parts = groups[found[0]]
        if "bias" not in parts or parts["bias"][1].shape != shapes["bias"]:
            raise ParamsError(f"{name}: {model.name}'s {layer} needs a bias of shape "
                              f"{shapes['bias']} beside {parts['weight'][0]!r}")
        params[layer] = {k: parts[k][1].astype(np.float32) for k in ("weight", "bias")}
        used.add(found[0])
    extra = [repr(parts[k][0]) for g, parts in groups.items() if g not in used for k in parts]
    if extra:
        raise ParamsError(f"{name}: holds arrays {model.name} does not have: {', '.join(extra)}")
    return params


def from_params(params: dict, model) -> dict[str, np.ndarray]:
    """The arrays Gluon's ``save_parameters`` writes for the tutorial's ``nn.Sequential`` of
    ``model``: ``"{index}.weight"`` and ``"{index}.bias"`` by the layer's place in it."""
    check_gluon(model)
    arrays = {}
    for index, (layer, _) in enumerate(model.layers):
        if layer in params:
            arrays[f"{index}.weight"] = np.asarray(params[layer]["weight"], np.float32)
            arrays[f"{index}.bias"] = np.asarray(params[layer]["bias"], np.float32)
    return arrays


def _template(model) -> dict[str, dict[str, tuple[int, ...]]]:
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    return {layer: {k: tuple(v.shape) for k, v in parts.items()} for layer, parts in shapes.items()}

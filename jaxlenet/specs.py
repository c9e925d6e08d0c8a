"""Networks as data: a spec is a JSON-able dict naming a network's input shape and its layers in
order, over the kinds the reference core has. ``validate`` checks one before anything compiles
(each refusal one line naming the layer and the field); ``build_layers`` turns it into
``(name, layer)`` pairs of ``jaxlenet.layers`` or ``jaxlenet.fast.layers``::

    {"name": "lenet", "input": [1, 28, 28], "init": "uniform",
     "layers": [{"kind": "conv", "channels": 20, "kernel": 5, "activation": "relu"},
                {"kind": "pool", "window": 2},
                {"kind": "conv", "channels": 50, "kernel": 3, "activation": "relu"},
                {"kind": "pool", "window": 2},
                {"kind": "flatten"},
                {"kind": "dense", "units": 128, "activation": "relu"},
                {"kind": "dense", "units": 10}]}

A layer's ``name`` defaults to its kind and its index among the layers of that kind (``conv0``,
``pool0``, ``conv1``, ...): the parameter names the LeNets always had, which checkpoints and
MXNet files use. ``init`` names the weight initialiser used unless training names another.
"""

from __future__ import annotations

import copy
import json
import math
import pathlib
import re

from jaxlenet import initializers
from jaxlenet.layers import ACTIVATIONS
from jaxlenet.pooling import output_size

KINDS = ("conv", "pool", "dense", "flatten", "activation")
POOLS = ("max", "avg", "sum")
# Defaults of each kind's optional fields; a field not listed (or required) is refused.
_OPTIONAL = {
    "conv": {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "activation": None},
    "pool": {"pool": "max", "stride": None, "padding": 0},
    "dense": {"activation": None},
    "flatten": {},
    "activation": {},
}
_REQUIRED = {"conv": ("channels", "kernel"), "pool": ("window",), "dense": ("units",),
             "flatten": (), "activation": ("function",)}
_TOP_FIELDS = ("name", "input", "init", "layers")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# Bounds that keep a spec's memory reasonable on any machine: a learner's network is far smaller.
MAX_LAYERS = 64
MAX_WIDTH = 65_536        # channels, units, image side
MAX_PARAMETERS = 50_000_000
CLASSES = 10


class SpecError(ValueError):
    """A spec that cannot be built: one line naming the layer and the field."""


def lenet() -> dict:
    """The tutorial's LeNet: conv 20@5x5 ReLU, max pool 2, conv 50@3x3 ReLU, max pool 2, flatten,
    dense 128 ReLU, dense 10; MXNet's default uniform(0.07) init."""
    return _named("lenet", "uniform", [
        {"kind": "conv", "channels": 20, "kernel": 5, "activation": "relu"},
        {"kind": "pool", "window": 2},
        {"kind": "conv", "channels": 50, "kernel": 3, "activation": "relu"},
        {"kind": "pool", "window": 2},
        {"kind": "flatten"},
        {"kind": "dense", "units": 128, "activation": "relu"},
        {"kind": "dense", "units": 10}])


def lenet5() -> dict:
    """The tutorial's LeNet-5: conv 6@5x5 sigmoid, max pool 2, conv 16@5x5 sigmoid, max pool 2,
    dense 120 sigmoid (which flattens its input, as Gluon's does), dense 84 sigmoid, dense 10;
    Xavier init."""
    return _named("lenet5", "xavier", [
        {"kind": "conv", "channels": 6, "kernel": 5, "activation": "sigmoid"},
        {"kind": "pool", "window": 2},
        {"kind": "conv", "channels": 16, "kernel": 5, "activation": "sigmoid"},
        {"kind": "pool", "window": 2},
        {"kind": "dense", "units": 120, "activation": "sigmoid"},
        {"kind": "dense", "units": 84, "activation": "sigmoid"},
        {"kind": "dense", "units": 10}])


def mlp() -> dict:
    """The previous chapter's multilayer perceptron: flatten, dense 256 ReLU, dense 10."""
    return _named("mlp", "uniform", [
        {"kind": "flatten"},
        {"kind": "dense", "units": 256, "activation": "relu"},
        {"kind": "dense", "units": 10}])


BUILTIN = {"lenet": lenet, "lenet5": lenet5, "mlp": mlp}


def _named(name: str, init: str, layers: list[dict]) -> dict:
    return validate({"name": name, "input": [1, 28, 28], "init": init, "layers": layers})


def resolve(model) -> dict:
    """The validated, complete spec of ``model``: a built-in name (``BUILTIN``) or a spec."""
    if isinstance(model, str):
        if model not in BUILTIN:
            raise SpecError(f"model {model!r} is not one of {tuple(BUILTIN)} (or a spec)")
        return BUILTIN[model]()
    return validate(model)


def load(path) -> dict:
    """The validated spec in JSON file ``path``; its name defaults to the file's stem."""
    path = pathlib.Path(path)
    try:
        if path.exists() and not path.is_file():
            raise SpecError(f"{path}: not a regular file")
        if path.stat().st_size > 1_000_000:
            raise SpecError(f"{path}: {path.stat().st_size:,} bytes is too large for a spec")
        spec = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SpecError(f"{path}: not a JSON spec ({str(exc).splitlines()[0][:200]})") from None
    if isinstance(spec, dict) and "name" not in spec:
        spec = {"name": re.sub(r"[^A-Za-z0-9_-]", "_", path.stem)[:64] or "net", **spec}
    try:
        return validate(spec)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


def dumps(spec: dict) -> str:
    """``spec`` as JSON a person edits: one layer a line."""
    spec = validate(spec)
    lines = [f'  "{key}": {json.dumps(spec[key])},' for key in ("name", "input", "init")]
    layers = [f"    {json.dumps(layer)}" for layer in spec["layers"]]
    return "{\n" + "\n".join(lines) + '\n  "layers": [\n' + ",\n".join(layers) + "\n  ]\n}"


def validate(spec) -> dict:
    """``spec`` checked and completed (every layer's name and optional fields filled in, so that
    a recorded spec never depends on today's defaults); raises ``SpecError`` naming the layer
    and field at fault, the network's shapes included: every layer must leave something of the
    image, and the network must end in ``CLASSES`` scores."""
    if not isinstance(spec, dict):
        raise SpecError(f"a spec is a JSON object with {', '.join(_TOP_FIELDS)}; got "
                        f"{type(spec).__name__}")
    unknown = sorted(set(map(str, spec)) - set(_TOP_FIELDS))
    if unknown:
        raise SpecError(f"unknown field {_show(unknown[0])} (a spec has {', '.join(_TOP_FIELDS)})")
    name = spec.get("name", "net")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", name):
        raise SpecError(f"name {_show(name)} must be 1-64 letters, digits, '_', '.' or '-'")
    shape = spec.get("input", [1, 28, 28])
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(_is_int(n) and 1 <= n <= MAX_WIDTH for n in shape)):
        raise SpecError(f"input {_show(shape)} must be [channels, height, width] of positive "
                        "integers")
    init = spec.get("init", "uniform")
    if not isinstance(init, str) or init not in initializers.BY_NAME:
        raise SpecError(f"init {_show(init)} is not one of {tuple(initializers.BY_NAME)}")
    layers = spec.get("layers")
    if not isinstance(layers, list) or not 1 <= len(layers) <= MAX_LAYERS:
        raise SpecError(f"layers must be a list of 1 to {MAX_LAYERS} layer objects, got "
                        f"{_show(layers)}")
    checked, counts, names = [], {}, set()
    current, parameters = tuple(shape), 0
    for index, layer in enumerate(layers):
        record = _layer(index, layer, counts)
        where = f"layer {index} ({record['name']})"
        if record["name"] in names:
            raise SpecError(f"{where}: name {record['name']!r} is used twice")
        names.add(record["name"])
        current, count = _output(where, record, current)
        parameters += count
        if parameters > MAX_PARAMETERS:
            raise SpecError(f"{where}: the network has over {MAX_PARAMETERS:,} parameters")
        checked.append(record)
    if current != (CLASSES,):
        raise SpecError(f"the network ends in shape {current}; it must end in {CLASSES} class "
                        f"scores (a last dense layer with units {CLASSES})")
    return {"name": name, "input": list(shape), "init": init, "layers": checked}


def _layer(index: int, layer, counts: dict) -> dict:
    if not isinstance(layer, dict):
        raise SpecError(f"layer {index}: expected an object with a 'kind', got {_show(layer)}")
    kind = layer.get("kind")
    if kind not in KINDS:
        raise SpecError(f"layer {index}: field 'kind' {_show(kind)} is not one of {KINDS}")
    name = layer.get("name", f"{kind}{counts.get(kind, 0)}")
    counts[kind] = counts.get(kind, 0) + 1
    where = f"layer {index} ({name if isinstance(name, str) else kind})"
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SpecError(f"{where}: field 'name' {_show(name)} must be a name of letters, digits "
                        "and '_' (not starting with a digit), at most 64")
    allowed = {"kind", "name", *_REQUIRED[kind], *_OPTIONAL[kind]}
    unknown = sorted(set(map(str, layer)) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown field {_show(unknown[0])} for a {kind} layer (it "
                        f"takes {', '.join(sorted(allowed - {'kind', 'name'}) or ['nothing'])})")
    missing = [field for field in _REQUIRED[kind] if field not in layer]
    if missing:
        raise SpecError(f"{where}: missing field {missing[0]!r}")
    given = {**_OPTIONAL[kind], **layer}
    return {"kind": kind, "name": name, **{field: copy.deepcopy(given[field])
                                           for field in (*_REQUIRED[kind], *_OPTIONAL[kind])}}


def output_shape(layer: dict, shape) -> tuple[int, ...]:
    """The output shape (no batch axis) of a validated spec's ``layer`` on ``shape``."""
    return _output(f"layer {layer['name']}", layer, tuple(shape))[0]


def _output(where: str, layer: dict, shape: tuple) -> tuple[tuple, int]:
    """The output shape (no batch axis) of ``layer`` on ``shape`` and its parameter count,
    with its fields checked."""
    kind = layer["kind"]
    if kind in ("conv", "dense") or kind == "activation":
        function = layer.get("activation") if kind != "activation" else layer["function"]
        if (function is not None or kind == "activation") and (
                not isinstance(function, str) or function not in ACTIVATIONS):
            field = "function" if kind == "activation" else "activation"
            raise SpecError(f"{where}: field {field!r} {_show(function)} is not one of "
                            f"{tuple(ACTIVATIONS)}")
    if kind == "activation":
        return shape, 0
    if kind in ("flatten", "dense"):
        features = math.prod(shape)
        if kind == "flatten":
            return (features,), 0
        units = _count(where, "units", layer["units"])
        return (units,), units * features + units
    if len(shape) != 3:
        raise SpecError(f"{where}: a {kind} layer needs images (channels, height, width), but "
                        f"its input is already flat {shape}")
    channels, *sizes = shape
    if kind == "pool":
        if layer["pool"] not in POOLS:
            raise SpecError(f"{where}: field 'pool' {_show(layer['pool'])} is not one of {POOLS}")
        window = _pair(where, "window", layer["window"], minimum=1)
        stride = window if layer["stride"] is None else _pair(where, "stride", layer["stride"], 1)
        padding = _pair(where, "padding", layer["padding"], minimum=0)
        for field, value in (("padding", padding),):
            if any(p >= k for p, k in zip(value, window)):
                raise SpecError(f"{where}: field {field!r} {_show(layer[field])} must be smaller "
                                f"than the window {_show(layer['window'])}")
        outs = [output_size(n, k, s, p, "valid") if k <= n + 2 * p else 0
                for n, k, s, p in zip(sizes, window, stride, padding)]
        _not_empty(where, "window", layer["window"], sizes, outs)
        return (channels, *outs), 0
    filters = _count(where, "channels", layer["channels"])
    kernel = _pair(where, "kernel", layer["kernel"], minimum=1)
    stride = _pair(where, "stride", layer["stride"], minimum=1)
    padding = _pair(where, "padding", layer["padding"], minimum=0)
    dilation = _pair(where, "dilation", layer["dilation"], minimum=1)
    groups = layer["groups"]
    if not _is_int(groups) or groups < 1 or channels % groups or filters % groups:
        raise SpecError(f"{where}: field 'groups' {_show(groups)} must be a positive integer "
                        f"dividing both the input's {channels} channels and the {filters} filters")
    outs = [(n + 2 * p - d * (k - 1) - 1) // s + 1 if d * (k - 1) + 1 <= n + 2 * p else 0
            for n, k, s, p, d in zip(sizes, kernel, stride, padding, dilation)]
    _not_empty(where, "kernel", layer["kernel"], sizes, outs)
    return (filters, *outs), filters * (channels // groups) * math.prod(kernel) + filters


def layer_flops(spec: dict) -> list[int]:
    """Forward FLOPs per image of each layer of the validated ``spec``, counted on the reference
    layers' arithmetic: a multiply-add is 2 FLOPs (convolutions, dense layers); each output
    element costs 1 for a bias and 1 for an activation; a pooling window of k elements costs
    k - 1 (max: comparisons; sum: additions), or k for an average (the division); flatten is
    free."""
    shape, counts = tuple(spec["input"]), []
    for layer in spec["layers"]:
        where = f"layer {layer['name']}"
        out, parameters = _output(where, layer, shape)
        outputs = math.prod(out)
        kind = layer["kind"]
        if kind in ("conv", "dense"):
            weights = parameters - out[0]  # the bias is one per filter or unit
            per_output = weights // out[0]
            flops = outputs * (2 * per_output + 1 + (layer["activation"] is not None))
        elif kind == "pool":
            window = math.prod(_pair(where, "window", layer["window"], 1))
            flops = outputs * (window - (layer["pool"] != "avg"))
        elif kind == "activation":
            flops = outputs
        else:
            flops = 0
        counts.append(flops)
        shape = out
    return counts


def _not_empty(where, field, value, sizes, outs):
    if min(outs) < 1:
        raise SpecError(f"{where}: field {field!r} {_show(value)} does not fit the "
                        f"{'x'.join(map(str, sizes))} image that reaches it: nothing is left")


def _count(where: str, field: str, value) -> int:
    if not _is_int(value) or not 1 <= value <= MAX_WIDTH:
        raise SpecError(f"{where}: field {field!r} {_show(value)} must be an integer from 1 to "
                        f"{MAX_WIDTH:,}")
    return value


def _pair(where: str, field: str, value, minimum: int) -> tuple[int, int]:
    pair = [value, value] if _is_int(value) else value
    if (not isinstance(pair, list) or len(pair) != 2
            or not all(_is_int(n) and minimum <= n <= MAX_WIDTH for n in pair)):
        raise SpecError(f"{where}: field {field!r} {_show(value)} must be an integer >= "
                        f"{minimum} or a list of two")
    return tuple(pair)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value) -> str:
    """``value`` as one short line of JSON, whatever it holds."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def build_layers(spec: dict, nn, weight_init=None) -> tuple:
    """``(name, layer)`` pairs of the validated ``spec``, built from ``nn`` (``jaxlenet.layers``
    or ``jaxlenet.fast.layers``, which share constructors), weights drawn by ``weight_init``
    (default: the spec's ``init``)."""
    weight_init = weight_init or initializers.BY_NAME[spec["init"]]
    pairs = []
    for layer in spec["layers"]:
        kind, options = layer["kind"], {k: _tuple(v) for k, v in layer.items()
                                        if k not in ("kind", "name")}
        if kind == "conv":
            built = nn.Conv(options.pop("channels"), options.pop("kernel"),
                            weight_init=weight_init, **options)
        elif kind == "pool":
            built = nn.Pool(options.pop("window"), kind=options.pop("pool"), **options)
        elif kind == "dense":
            built = nn.Dense(options.pop("units"), weight_init=weight_init, **options)
        elif kind == "flatten":
            built = nn.Flatten()
        else:
            built = nn.Activation(options["function"])
        pairs.append((layer["name"], built))
    return tuple(pairs)


def _tuple(value):
    return tuple(value) if isinstance(value, list) else value

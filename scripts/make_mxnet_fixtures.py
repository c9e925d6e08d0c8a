"""Writes golden fixtures from the real MXNet 1.9.1: inputs, outputs and gradients (for a random
cotangent) of Convolution, Pooling, FullyConnected, Activation, flatten and Gluon's
SoftmaxCrossEntropyLoss across their parameter space, of the pure nd functions tutorials call
(sum, mean, max, argmax, sqrt, exp, maximum, one_hot, log_softmax, zeros_like, stack, concat,
add_n; the samplers' shapes and dtypes), plus the calls MXNet refuses.

Run with MXNet's own interpreter (it needs numpy < 1.24):

    python3 -m venv /tmp/mx && /tmp/mx/bin/pip install mxnet==1.9.1 "numpy<1.24"
    /tmp/mx/bin/python scripts/make_mxnet_fixtures.py tests/fixtures/mxnet

Average pooling with 'full' windows is generated with MXNET_MKLDNN_ENABLED=0: MXNet 1.9.1's oneDNN
backward divides by the whole kernel there while its forward clips the window (an MXNet bug, see
docs/from-mxnet.md); the native kernels give the true derivative of the forward.
"""

import json
import os
import subprocess
import sys
import zlib

import numpy as np


def conv_cases(rng):
    cases = []
    for i in range(90):
        nsp = [1, 2, 2, 2, 3][i % 5]
        groups = int(rng.choice([1, 1, 2, 3]))
        cin, cout = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
        kernel = tuple(int(k) for k in rng.integers(1, 4, nsp))
        stride = tuple(int(s) for s in rng.integers(1, 4, nsp))
        dilate = tuple(int(d) for d in rng.integers(1, 3, nsp))
        pad = tuple(int(p) for p in rng.integers(0, 3 if i % 7 else 5, nsp))
        sizes = tuple(int(n) for n in rng.integers(3 if nsp == 3 else 4, 6 if nsp == 3 else 9, nsp))
        no_bias = bool(i % 4 == 3)
        kwargs = {"kernel": kernel, "num_filter": cout, "num_group": groups, "no_bias": no_bias}
        for name, value, default in (("stride", stride, 1), ("dilate", dilate, 1), ("pad", pad, 0)):
            if i % 3 or any(v != default for v in value):
                kwargs[name] = value
        dtype = "float64" if i % 11 == 5 else "float32"
        inputs = {"data": rng.standard_normal((int(rng.integers(1, 3)), cin) + sizes),
                  "weight": rng.standard_normal((cout, cin // groups) + kernel)}
        if not no_bias:
            inputs["bias"] = rng.standard_normal(cout)
        cases.append(dict(op="Convolution", kwargs=kwargs, inputs=inputs, dtype=dtype))
    # Refusals: kernel larger than the padded input, channel mismatch, int kernel on 2-D data,
    # broadcast stride, bias with no_bias, missing bias, wrong bias length, integer data.
    x = rng.standard_normal((1, 2, 4, 4))
    w = rng.standard_normal((3, 2, 3, 3))
    b = rng.standard_normal(3)
    refusals = [
        ({"kernel": (5, 5), "num_filter": 3}, {"data": x, "weight": rng.standard_normal((3, 2, 5, 5)), "bias": b}),
        ({"kernel": (3, 3), "num_filter": 3}, {"data": rng.standard_normal((1, 3, 4, 4)), "weight": w, "bias": b}),
        ({"kernel": 3, "num_filter": 3}, {"data": x, "weight": w, "bias": b}),
        ({"kernel": (3, 3), "num_filter": 3, "stride": 2}, {"data": x, "weight": w, "bias": b}),
        ({"kernel": (3, 3), "num_filter": 3, "no_bias": True}, {"data": x, "weight": w, "bias": b}),
        ({"kernel": (3, 3), "num_filter": 3}, {"data": x, "weight": w}),
        ({"kernel": (3, 3), "num_filter": 3}, {"data": x, "weight": w, "bias": rng.standard_normal(2)}),
        ({"kernel": (3, 3), "num_filter": 2}, {"data": x, "weight": w, "bias": b}),
        ({"kernel": (3, 3), "num_filter": 3, "stride": (0, 1)}, {"data": x, "weight": w, "bias": b}),
        ({"kernel": (1, 1, 1, 1), "num_filter": 3}, {"data": rng.standard_normal((1, 2, 2, 2, 2, 2)), "weight": rng.standard_normal((3, 2, 1, 1, 1, 1)), "bias": b}),
    ]
    for kwargs, inputs in refusals:
        cases.append(dict(op="Convolution", kwargs=kwargs, inputs=inputs, dtype="float32"))
    cases.append(dict(op="Convolution", kwargs={"kernel": (3, 3), "num_filter": 3},
                      inputs={"data": x, "weight": w, "bias": b}, dtype="int32"))
    return cases


def pool_cases(rng):
    cases = []
    kinds = ["max", "avg", "sum", "lp", "max", "avg"]
    for i in range(160):
        nsp = [1, 2, 2, 2, 3][i % 5]
        pool_type = kinds[i % len(kinds)]
        kernel = tuple(int(k) for k in rng.integers(1, 4, nsp))
        kwargs = {"kernel": kernel, "pool_type": pool_type}
        if i % 4:
            kwargs["stride"] = tuple(int(s) for s in rng.integers(1, 4, nsp))
        if i % 3:
            kwargs["pad"] = tuple(int(rng.integers(0, k + (0 if pool_type == "max" else 1))) for k in kernel)
        if i % 2:
            kwargs["pooling_convention"] = "full"
        if pool_type == "avg" and i % 4 == 1:
            kwargs["count_include_pad"] = False
        if pool_type == "avg" and i % 4 == 3:
            kwargs["count_include_pad"] = True
        if pool_type == "lp":
            kwargs["p_value"] = int([1, 2, 3][i % 3])
        if i % 17 == 4:
            kwargs["global_pool"] = True
        sizes = tuple(int(n) for n in rng.integers(2 if nsp == 3 else 3, 5 if nsp == 3 else 8, nsp))
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) + sizes
        # Few distinct values, so max pooling meets ties (and lp windows meet zeros).
        data = rng.integers(-2, 3, shape).astype(np.float64) if i % 2 else rng.standard_normal(shape)
        dtype = "float64" if i % 13 == 6 else "float32"
        cases.append(dict(op="Pooling", kwargs=kwargs, inputs={"data": data}, dtype=dtype))
    # Channels-last layout, and the tutorial-relevant non-overlapping 2x2 max with ties.
    cases.append(dict(op="Pooling", kwargs={"kernel": (2, 2), "stride": (2, 2), "layout": "NHWC"},
                      inputs={"data": rng.integers(0, 2, (2, 4, 6, 3)).astype(np.float64)}, dtype="float32"))
    cases.append(dict(op="Pooling", kwargs={"kernel": (2, 2), "stride": (2, 2)},
                      inputs={"data": rng.integers(0, 2, (2, 3, 6, 6)).astype(np.float64)}, dtype="float32"))
    cases.append(dict(op="Pooling", kwargs={"kernel": (2, 2), "stride": (2, 2)},
                      inputs={"data": rng.integers(0, 2, (2, 3, 7, 5)).astype(np.float64)}, dtype="float32"))
    x = rng.standard_normal((1, 2, 5, 5))
    refusals = [
        {"kernel": (6, 6)},
        {"kernel": (3, 3), "pad": (3, 3)},
        {"kernel": (2, 2), "pool_type": "avg", "pad": (2, 2)},
        {"kernel": 2},
        {"kernel": (2, 2), "stride": 2},
        {"kernel": (2, 2), "pool_type": "median"},
        {"kernel": (2, 2), "pool_type": "lp"},
        {"kernel": (2, 2), "pool_type": "lp", "p_value": 4},
        {"kernel": (2, 2), "pooling_convention": "same"},
        {},
    ]
    for kwargs in refusals:
        cases.append(dict(op="Pooling", kwargs=kwargs, inputs={"data": x}, dtype="float32"))
    return cases


def dense_cases(rng):
    cases = []
    for i, (shape, flatten) in enumerate([((4, 6), True), ((2, 3, 4), True), ((2, 3, 4), False),
                                          ((6,), False), ((2, 16, 5, 5), True), ((3, 1), True)]):
        in_units = int(np.prod(shape[1:])) if flatten and len(shape) > 1 else shape[-1]
        if flatten and len(shape) == 1:
            in_units = 1
        hidden = 3 + i
        inputs = {"data": rng.standard_normal(shape), "weight": rng.standard_normal((hidden, in_units))}
        no_bias = i == 3
        if not no_bias:
            inputs["bias"] = rng.standard_normal(hidden)
        cases.append(dict(op="FullyConnected", kwargs={"num_hidden": hidden, "flatten": flatten,
                                                       "no_bias": no_bias},
                          inputs=inputs, dtype="float32"))
    cases.append(dict(op="FullyConnected", kwargs={"num_hidden": 4},
                      inputs={"data": rng.standard_normal(6), "weight": rng.standard_normal((4, 6)),
                              "bias": rng.standard_normal(4)}, dtype="float32"))
    cases.append(dict(op="FullyConnected", kwargs={"num_hidden": 5},
                      inputs={"data": rng.standard_normal((2, 6)), "weight": rng.standard_normal((4, 6)),
                              "bias": rng.standard_normal(4)}, dtype="float32"))
    return cases


def activation_cases(rng):
    cases = []
    data = np.concatenate([rng.standard_normal(12) * 3, [0.0, -0.0, 100.0, -100.0, 20.0, -20.0]])
    for act in ("relu", "sigmoid", "tanh", "softrelu", "softsign"):
        cases.append(dict(op="Activation", kwargs={"act_type": act},
                          inputs={"data": data.reshape(3, 6)}, dtype="float32"))
    cases.append(dict(op="relu", kwargs={}, inputs={"data": data.reshape(2, 9)}, dtype="float32"))
    cases.append(dict(op="Activation", kwargs={"act_type": "gelu"}, inputs={"data": data}, dtype="float32"))
    for shape in ((5,), (2, 3), (2, 3, 4), (2, 1, 3, 2)):
        cases.append(dict(op="flatten", kwargs={}, inputs={"data": rng.standard_normal(shape)}, dtype="float32"))
    return cases


def loss_cases(rng):
    cases = []
    specs = [
        ({}, (4, 5), "sparse", None),
        ({"from_logits": True}, (4, 5), "sparse", None),
        ({"weight": 0.5}, (3, 4), "sparse", None),
        ({"sparse_label": False}, (3, 4), "dense", None),
        ({"axis": 1}, (2, 4, 3), "sparse", None),
        ({}, (2, 3, 5), "sparse", None),
        ({"batch_axis": 1}, (3, 2, 4), "sparse", None),
        ({}, (4, 4), "weird", None),
        ({}, (4, 4), "column", None),
        ({}, (3, 4), "sparse", "sample_weight"),
    ]
    for kwargs, shape, kind, extra in specs:
        axis = kwargs.get("axis", -1) % len(shape)
        reduced = shape[:axis] + shape[axis + 1:]
        pred = rng.standard_normal(shape) * 2
        if kind == "dense":
            label = rng.random(shape) * 2
        elif kind == "weird":
            label = np.array([1.999, -0.9, 4.0, -1.0])
        elif kind == "column":
            label = rng.integers(0, shape[-1], (shape[0], 1)).astype(np.float64)
        else:
            label = rng.integers(0, shape[axis], reduced).astype(np.float64)
        inputs = {"pred": pred, "label": label}
        if extra:
            inputs["sample_weight"] = rng.random((shape[0], 1))
        cases.append(dict(op="SoftmaxCrossEntropyLoss", kwargs=kwargs, inputs=inputs, dtype="float32"))
    return cases


def function_cases(rng):
    """MXNet's pure nd functions a tutorial calls: reductions, elementwise maths, one_hot,
    log_softmax, joining arrays, and the samplers (their shapes and dtypes only)."""
    cases = []
    x = rng.integers(-2, 3, (2, 3, 4)).astype(np.float64)  # ties, for max and maximum
    for op in ("sum", "mean", "max"):
        for kwargs in ({}, {"axis": 1}, {"axis": (0, 2)}, {"axis": -1, "keepdims": True},
                       {"axis": 1, "exclude": True}, {"keepdims": True}, {"axis": ()}):
            cases.append(dict(op=op, kwargs=kwargs, inputs={"data": x}, dtype="float32"))
        cases.append(dict(op=op, kwargs={"axis": 3}, inputs={"data": x}, dtype="float32"))
    for kwargs in ({}, {"axis": 1}, {"axis": -1, "keepdims": True}, {"axis": 0}):
        cases.append(dict(op="argmax", kwargs=kwargs, inputs={"data": x}, dtype="float32", wrt=[]))
    cases.append(dict(op="argmax", kwargs={"axis": 1}, inputs={"data": x}, dtype="float64", wrt=[]))
    cases.append(dict(op="sqrt", kwargs={}, inputs={"data": rng.random((3, 4)) * 4 + 0.1}, dtype="float32"))
    cases.append(dict(op="exp", kwargs={}, inputs={"data": rng.standard_normal((2, 5))}, dtype="float32"))
    cases.append(dict(op="maximum", kwargs={}, inputs={"lhs": x, "rhs": rng.integers(-2, 3, (2, 3, 4)).astype(np.float64)}, dtype="float32"))
    cases.append(dict(op="maximum", kwargs={"rhs": 0.5}, inputs={"lhs": x}, dtype="float32"))
    cases.append(dict(op="maximum", kwargs={}, inputs={"lhs": x, "rhs": rng.integers(-2, 3, (2, 1, 4)).astype(np.float64)}, dtype="float32"))
    for kwargs in ({"depth": 4}, {"depth": 3, "on_value": 5.0, "off_value": -1.0},
                   {"depth": 4, "dtype": "float64"}):
        cases.append(dict(op="one_hot", kwargs=kwargs, inputs={"indices": np.array([[1, 0, 3], [5, -1, 2]], np.float64)}, dtype="float32", wrt=[]))
    for kwargs in ({}, {"axis": 0}, {"temperature": 2.0}):
        cases.append(dict(op="log_softmax", kwargs=kwargs, inputs={"data": rng.standard_normal((3, 4))}, dtype="float32"))
    cases.append(dict(op="zeros_like", kwargs={}, inputs={"data": x}, dtype="float32", wrt=[]))
    parts = {"arg0": rng.standard_normal((2, 3)), "arg1": rng.standard_normal((2, 3)), "arg2": rng.standard_normal((2, 3))}
    for op, kwargs in (("stack", {}), ("stack", {"axis": 2}), ("concat", {}), ("concat", {"dim": 0}), ("add_n", {})):
        cases.append(dict(op=op, kwargs=kwargs, inputs=parts, dtype="float32", positional=True))
    uneven = {"arg0": rng.standard_normal((2, 3)), "arg1": rng.standard_normal((3, 3))}
    for op in ("stack", "concat", "add_n"):
        cases.append(dict(op=op, kwargs={}, inputs=uneven, dtype="float32", positional=True))
    for op, kwargs in (("random.uniform", {}), ("random.uniform", {"low": -1.0, "high": 3.0, "shape": (2, 5)}),
                       ("random.normal", {}), ("random.normal", {"loc": 2.0, "scale": 0.5, "shape": 7}),
                       ("random.normal", {"shape": (3,), "dtype": "float64"})):
        cases.append(dict(op=op, kwargs=kwargs, inputs={}, dtype="float32", wrt=[], sampler=True))
    return cases


def all_cases():
    rng = np.random.default_rng(20261124)
    cases = (conv_cases(rng) + pool_cases(rng) + dense_cases(rng) + activation_cases(rng)
             + loss_cases(rng) + function_cases(rng))
    for index, case in enumerate(cases):
        case["name"] = f"{index:03d}_{case['op']}"
        kw = case["kwargs"]
        case["native"] = (case["op"] == "Pooling" and kw.get("pool_type", "max") == "avg"
                          and kw.get("pooling_convention") == "full")
    return cases


def run_case(mx, case):
    """{'error': message} or outputs and gradients for one case."""
    op, kwargs = case["op"], dict(case["kwargs"])
    arrays = {k: mx.nd.array(v, dtype=case["dtype"]) for k, v in case["inputs"].items()}
    differentiable = case.get("wrt", list(arrays))
    if op == "SoftmaxCrossEntropyLoss":
        differentiable = ["pred"] + (["label"] if kwargs.get("sparse_label") is False else [])
    function = mx.nd
    for part in op.split("."):
        function = getattr(function, part, None)
    try:
        for k in differentiable:
            arrays[k].attach_grad()
        with mx.autograd.record():
            if op == "SoftmaxCrossEntropyLoss":
                loss = mx.gluon.loss.SoftmaxCrossEntropyLoss(**kwargs)
                out = loss(arrays["pred"], arrays["label"], arrays.get("sample_weight"))
            elif case.get("positional"):
                out = function(*arrays.values(), **kwargs)
            else:
                out = function(**arrays, **kwargs)
        out_np = out.asnumpy()
    except Exception as exc:  # MXNetError, or a Python-side refusal
        return {"error": _first_error_line(exc)}
    if case.get("sampler"):  # random values: only the shape and dtype are MXNet's to compare
        return {"output_shape": np.array(out_np.shape), "output_dtype": np.array(str(out_np.dtype))}
    if not differentiable:
        return {"output": out_np}
    try:
        rng = np.random.default_rng(zlib.crc32(case["name"].encode()))
        cotangent = rng.standard_normal(out_np.shape).astype(out_np.dtype)
        out.backward(mx.nd.array(cotangent, dtype=out_np.dtype))
        result = {"output": out_np, "cotangent": cotangent}
        for k in differentiable:
            result["grad_" + k] = arrays[k].grad.asnumpy()
        return result
    except Exception as exc:  # the oneDNN backward bug of avg 'full' (see the module docstring)
        return {"error": None, "backward_error": _first_error_line(exc)}


def gluon_listings(mx):
    """``print(net)`` of the tutorials' Gluon LeNet and LeNet-5, after a forward pass has given
    every layer its input shape."""
    nn = mx.gluon.nn
    nets = {
        "lenet": [nn.Conv2D(channels=20, kernel_size=5, activation="relu"),
                  nn.MaxPool2D(pool_size=2, strides=2),
                  nn.Conv2D(channels=50, kernel_size=3, activation="relu"),
                  nn.MaxPool2D(pool_size=2, strides=2), nn.Flatten(),
                  nn.Dense(128, activation="relu"), nn.Dense(10)],
        "lenet5": [nn.Conv2D(channels=6, kernel_size=5, activation="sigmoid"),
                   nn.MaxPool2D(pool_size=2, strides=2),
                   nn.Conv2D(channels=16, kernel_size=5, activation="sigmoid"),
                   nn.MaxPool2D(pool_size=2, strides=2),
                   nn.Dense(120, activation="sigmoid"), nn.Dense(84, activation="sigmoid"),
                   nn.Dense(10)],
    }
    listings = {}
    for name, layers in nets.items():
        net = nn.Sequential()
        net.add(*layers)
        net.initialize()
        net(mx.nd.zeros((1, 1, 28, 28)))
        listings[name] = str(net)
    return listings


def _first_error_line(exc):
    lines = [line for line in str(exc).splitlines() if "Error" in line or "failed" in line]
    return (lines or str(exc).splitlines() or [type(exc).__name__])[0].strip()[:300]


def generate(part):
    import mxnet as mx
    results = {}
    for case in all_cases():
        if part == "native" and not case["native"]:
            continue
        result = results[case["name"]] = run_case(mx, case)
        if "backward_error" in result and (part == "native" or not case["native"]):
            raise RuntimeError(f"{case['name']}: backward failed: {result['backward_error']}")
    return results


def main(out_dir):
    if len(sys.argv) > 2:  # a child: write one part
        part = sys.argv[2]
        results = generate(part)
        arrays = {f"{name}/{key}": value for name, res in results.items()
                  for key, value in res.items() if not key.endswith("error")}
        np.savez(os.path.join(out_dir, f"part_{part}.npz"), **arrays)
        with open(os.path.join(out_dir, f"part_{part}.json"), "w") as f:
            json.dump({name: res.get("error") for name, res in results.items()}, f)
        return
    os.makedirs(out_dir, exist_ok=True)
    for part, extra_env in (("default", {}), ("native", {"MXNET_MKLDNN_ENABLED": "0"})):
        subprocess.run([sys.executable, __file__, out_dir, part], check=True,
                       env={**os.environ, **extra_env})
    parts = {}
    for part in ("default", "native"):
        with open(os.path.join(out_dir, f"part_{part}.json")) as f:
            errors = json.load(f)
        with np.load(os.path.join(out_dir, f"part_{part}.npz")) as data:
            parts[part] = errors, {k: data[k] for k in data.files}
        for suffix in ("json", "npz"):
            os.remove(os.path.join(out_dir, f"part_{part}.{suffix}"))
    errors, arrays = parts["default"]
    native_errors, native_arrays = parts["native"]
    # Native results replace oneDNN's wherever the default build's forward accepts the call.
    for name, error in native_errors.items():
        if errors[name] is None:
            errors[name] = error
            arrays.update({k: v for k, v in native_arrays.items() if k.startswith(name + "/")})
    cases = []
    for case in all_cases():
        for key, value in case.pop("inputs").items():
            arrays[f"{case['name']}/input_{key}"] = value.astype(case["dtype"] if case["dtype"] != "int32" else "float64")
        case["error"] = errors[case["name"]]
        cases.append(case)
    import mxnet as mx
    with open(os.path.join(out_dir, "cases.json"), "w") as f:
        json.dump({"mxnet": mx.__version__, "listings": gluon_listings(mx), "cases": cases}, f,
                  indent=1)
    np.savez_compressed(os.path.join(out_dir, "arrays.npz"), **arrays)
    print(f"{len(cases)} cases ({sum(c['error'] is not None for c in cases)} refusals) "
          f"written to {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/mxnet")

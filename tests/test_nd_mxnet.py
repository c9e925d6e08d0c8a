"""jaxlenet.nd against golden fixtures written by the real MXNet 1.9.1
(scripts/make_mxnet_fixtures.py): forward values, gradients for a random cotangent, refusals."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlenet import nd

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "mxnet"
INDEX = json.loads((FIXTURES / "cases.json").read_text())
ARRAYS = np.load(FIXTURES / "arrays.npz")
CASES = INDEX["cases"]


def _kwargs(case):
    kwargs = dict(case["kwargs"])
    for key, value in kwargs.items():
        if isinstance(value, list):
            kwargs[key] = tuple(value)
    return kwargs


def _call(case, inputs):
    kwargs = _kwargs(case)
    if case["op"] == "SoftmaxCrossEntropyLoss":
        return nd.SoftmaxCrossEntropyLoss(**kwargs)(inputs["pred"], inputs["label"],
                                                    inputs.get("sample_weight"))
    return getattr(nd, case["op"])(**inputs, **kwargs)


def _inputs(case):
    prefix = case["name"] + "/input_"
    return {k[len(prefix):]: jnp.asarray(ARRAYS[k], case["dtype"])
            for k in ARRAYS.files if k.startswith(prefix)}


def test_fixtures_come_from_mxnet_1_9_1():
    assert INDEX["mxnet"] == "1.9.1"
    assert len(CASES) > 250
    assert {c["op"] for c in CASES} >= {"Convolution", "Pooling", "FullyConnected", "Activation",
                                         "relu", "flatten", "SoftmaxCrossEntropyLoss"}


@pytest.mark.parametrize("case", [c for c in CASES if c["error"]], ids=lambda c: c["name"])
def test_refuses_what_mxnet_refuses(case):
    with pytest.raises((ValueError, TypeError)):
        _call(case, _inputs(case))


@pytest.mark.parametrize("case", [c for c in CASES if not c["error"]], ids=lambda c: c["name"])
def test_matches_mxnet_forward_and_gradient(case):
    inputs = _inputs(case)
    name = case["name"]
    tol = dict(rtol=1e-4, atol=1e-4) if case["dtype"] == "float32" else dict(rtol=1e-9, atol=1e-9)
    if case["op"] == "SoftmaxCrossEntropyLoss":
        wrt = ["pred"] + (["label"] if case["kwargs"].get("sparse_label") is False else [])
    else:
        wrt = list(inputs)
    fixed = {k: v for k, v in inputs.items() if k not in wrt}

    def f(*args):
        return _call(case, {**fixed, **dict(zip(wrt, args))})

    out, vjp = jax.vjp(f, *[inputs[k] for k in wrt])
    expected = ARRAYS[f"{name}/output"]
    assert out.shape == expected.shape
    assert out.dtype == jnp.dtype(case["dtype"])
    unspecified = np.isnan(expected)
    if unspecified.any():
        # MXNet's 3-D average of an empty window is NaN (0/0, see mxnet-semantics.md); jaxlenet
        # gives 0, like MXNet's 1-D and 2-D kernels. Such windows send no gradient either way.
        assert case["op"] == "Pooling" and len(case["kwargs"]["kernel"]) == 3
        np.testing.assert_array_equal(np.asarray(out)[unspecified], 0)
        expected = np.where(unspecified, 0, expected)
    np.testing.assert_allclose(out, expected, **tol)
    grads = vjp(jnp.asarray(ARRAYS[f"{name}/cotangent"], out.dtype))
    for key, grad in zip(wrt, grads):
        np.testing.assert_allclose(grad, ARRAYS[f"{name}/grad_{key}"], **tol,
                                   err_msg=f"gradient of {key}")


@pytest.mark.parametrize("case", [c for c in CASES if not c["error"] and c["op"] == "Pooling"][:40],
                         ids=lambda c: c["name"])
def test_pooling_under_jit_matches_eager(case):
    inputs = _inputs(case)
    eager = _call(case, inputs)
    jitted = jax.jit(lambda x: _call(case, {"data": x}))(inputs["data"])
    np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-6)

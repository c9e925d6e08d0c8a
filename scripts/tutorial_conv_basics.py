"""The tutorial's convolution and pooling cells, with ``from jaxlenet import nd`` in place of
``from mxnet import nd``; prints what the tutorial prints."""

import argparse

import jax
import numpy as np

from jaxlenet import nd


def show(title, array):
    print(f"{title}:\n{np.asarray(array)}\n")


def main():
    argparse.ArgumentParser(description=__doc__).parse_args()

    # Batch x channel x height x width; weight is out_channels x in_channels x height x width.
    w = nd.arange(4).reshape((1, 1, 2, 2))
    b = nd.array([1])
    data = nd.arange(9).reshape((1, 1, 3, 3))
    out = nd.Convolution(data, w, b, kernel=w.shape[2:], num_filter=w.shape[1])
    show("input", data)
    show("weight", w)
    show("bias", b)
    show("output", out)

    out = nd.Convolution(data, w, b, kernel=w.shape[2:], num_filter=w.shape[1],
                         stride=(2, 2), pad=(1, 1))
    show("output with stride (2, 2) and pad (1, 1)", out)

    w = nd.arange(8).reshape((1, 2, 2, 2))
    data = nd.arange(18).reshape((1, 2, 3, 3))
    out = nd.Convolution(data, w, b, kernel=w.shape[2:], num_filter=w.shape[0])
    show("two input channels: output", out)

    w = nd.arange(16).reshape((2, 2, 2, 2))
    b = nd.array([1, 2])
    out = nd.Convolution(data, w, b, kernel=w.shape[2:], num_filter=w.shape[0])
    show("two output channels: output", out)

    X = nd.random_normal(shape=(1, 3, 3, 3), key=jax.random.PRNGKey(0))
    K = nd.random_normal(shape=(2, 3, 1, 1), key=jax.random.PRNGKey(1))
    out = nd.Convolution(X, K, kernel=(1, 1), num_filter=2, no_bias=True)
    matmul = (K.reshape(2, 3) @ X.reshape(3, 9)).reshape(1, 2, 3, 3)
    print(f"1x1 kernel over 3 channels equals a matrix product: "
          f"{bool(np.allclose(out, matmul, atol=1e-6))}\n")

    X = nd.arange(16).reshape((1, 1, 4, 4))
    show("max pool 3x3, stride 3, on arange(16)", nd.Pooling(X, kernel=(3, 3), stride=(3, 3)))
    show("max pool 3x3, pad 1, stride 2", nd.Pooling(X, kernel=(3, 3), pad=(1, 1), stride=(2, 2)))
    show("max pool 2x3, pad (1, 2), stride (2, 3)",
         nd.Pooling(X, kernel=(2, 3), pad=(1, 2), stride=(2, 3)))

    data = nd.arange(18).reshape((1, 2, 3, 3))
    show("max pooling (kernel 2x2; MXNet's stride defaults to 1)",
         nd.Pooling(data=data, pool_type="max", kernel=(2, 2)))
    show("avg pooling", nd.Pooling(data=data, pool_type="avg", kernel=(2, 2)))


if __name__ == "__main__":
    main()

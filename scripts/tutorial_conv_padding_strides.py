"""The second tutorial's convolution cells (bias nd.array([0]): one and several channels in and
out, padding, strides), its pooling cell, and its Gluon LeNet as ``print(net)`` lists it, with
``from jaxlenet import nd`` in place of ``from mxnet import nd``; prints what it prints."""

import argparse

import numpy as np

from jaxlenet import models, nd


def show(data, w, out):
    print("input :", np.asarray(data), "\n\nweight :", np.asarray(w), "\n\noutput :",
          np.asarray(out), "\n")


def main():
    argparse.ArgumentParser(description=__doc__).parse_args()

    # One channel in and out.
    data = nd.arange(9).reshape((1, 1, 3, 3))
    w = nd.arange(4).reshape((1, 1, 2, 2))
    out = nd.Convolution(data, w, nd.array([0]), kernel=w.shape[2:], num_filter=w.shape[0])
    show(data, w, out)

    # Two channels in, one out: each channel's correlation, summed.
    w = nd.arange(8).reshape((1, 2, 2, 2))
    data = nd.arange(18).reshape((1, 2, 3, 3))
    out = nd.Convolution(data, w, nd.array([0]), kernel=w.shape[2:], num_filter=w.shape[0])
    show(data, w, out)

    # Three channels in, two out, a 1x1 kernel.
    data = nd.arange(27).reshape((1, 3, 3, 3))
    w = nd.arange(6).reshape((2, 3, 1, 1))
    out = nd.Convolution(data, w, nd.array([0, 0]), kernel=w.shape[2:], num_filter=w.shape[0])
    show(data, w, out)

    # Padding.
    w = nd.arange(4).reshape((1, 1, 2, 2))
    data = nd.arange(9).reshape((1, 1, 3, 3))
    out = nd.Convolution(data, w, nd.array([0]), kernel=w.shape[2:], num_filter=w.shape[0],
                         pad=(1, 1))
    show(data, w, out)

    # Strides.
    data = nd.arange(16).reshape((1, 1, 4, 4))
    w = nd.arange(4).reshape((1, 1, 2, 2))
    out = nd.Convolution(data, w, nd.array([0]), kernel=w.shape[2:], num_filter=w.shape[0],
                         stride=(2, 2))
    show(data, w, out)

    # Pooling.
    data = nd.arange(9).reshape((1, 1, 3, 3))
    max_pool = nd.Pooling(data=data, pool_type="max", kernel=(2, 2))
    avg_pool = nd.Pooling(data=data, pool_type="avg", kernel=(2, 2))
    print("data :", np.asarray(data), "\n\nmax pool :", np.asarray(max_pool), "\n\navg pool :",
          np.asarray(avg_pool), "\n")

    # The Gluon LeNet: print(net) once its input shape is known.
    print(models.describe(models.build("lenet")))


if __name__ == "__main__":
    main()

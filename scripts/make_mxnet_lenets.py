"""Writes MXNet-trained LeNets for tests/test_mxnet_params.py, with the real MXNet 1.9.1: each
of the tutorials' Gluon LeNets (lenet: ReLU; lenet5: sigmoid) and one changed network as the
exercises change it (lenet-avg: 6 and 16 filters, average pooling; its jaxlenet spec is written
beside it as lenet-avg.json) trained briefly on Fashion-MNIST, saved as Gluon saves it
(``net.save_parameters``) and, for lenet5, as ``nd.save`` of its prefixed parameter names
(``net.collect_params().save``), with its logits on the first 100 test images.

    python3 -m venv /tmp/mx && /tmp/mx/bin/pip install mxnet==1.9.1 "numpy<1.24"
    /tmp/mx/bin/python scripts/make_mxnet_lenets.py tests/fixtures/mxnet

Fashion-MNIST is read from Debian's package (/usr/share/datasets/fashion-mnist), with numpy.
"""

import gzip
import json
import os
import sys

import numpy as np

DATA = "/usr/share/datasets/fashion-mnist"


def read_idx(name):
    with gzip.open(os.path.join(DATA, name)) as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def gluon_lenet(nn, name):
    net = nn.Sequential(prefix=f"{name}_")
    with net.name_scope():
        if name == "lenet":
            net.add(nn.Conv2D(channels=20, kernel_size=5, activation="relu"),
                    nn.MaxPool2D(pool_size=2, strides=2),
                    nn.Conv2D(channels=50, kernel_size=3, activation="relu"),
                    nn.MaxPool2D(pool_size=2, strides=2), nn.Flatten(),
                    nn.Dense(128, activation="relu"), nn.Dense(10))
        elif name == "lenet-avg":
            net.add(nn.Conv2D(channels=6, kernel_size=5, activation="relu"),
                    nn.AvgPool2D(pool_size=2, strides=2),
                    nn.Conv2D(channels=16, kernel_size=5, activation="relu"),
                    nn.AvgPool2D(pool_size=2, strides=2), nn.Flatten(),
                    nn.Dense(120, activation="relu"), nn.Dense(10))
        else:
            net.add(nn.Conv2D(channels=6, kernel_size=5, activation="sigmoid"),
                    nn.MaxPool2D(pool_size=2, strides=2),
                    nn.Conv2D(channels=16, kernel_size=5, activation="sigmoid"),
                    nn.MaxPool2D(pool_size=2, strides=2),
                    nn.Dense(120, activation="sigmoid"), nn.Dense(84, activation="sigmoid"),
                    nn.Dense(10))
    return net


def main(out_dir):
    import mxnet as mx
    from mxnet import autograd, gluon, nd

    mx.random.seed(0)
    train_x = read_idx("train-images-idx3-ubyte.gz")[:6400].astype(np.float32)[:, None] / 255
    train_y = read_idx("train-labels-idx1-ubyte.gz")[:6400].astype(np.float32)
    test_x = read_idx("t10k-images-idx3-ubyte.gz")[:100].astype(np.float32)[:, None] / 255
    logits = {}
    recipes = (("lenet", 0.5, mx.init.Uniform(0.07)), ("lenet5", 0.9, mx.init.Xavier()),
               ("lenet-avg", 0.5, mx.init.Uniform(0.07)))
    for name, lr, init in recipes:
        net = gluon_lenet(gluon.nn, name)
        net.initialize(init)
        trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr})
        loss = gluon.loss.SoftmaxCrossEntropyLoss()
        for start in range(0, len(train_x), 64):
            x, y = nd.array(train_x[start:start + 64]), nd.array(train_y[start:start + 64])
            with autograd.record():
                value = loss(net(x), y)
            value.backward()
            trainer.step(64)
        net.save_parameters(os.path.join(out_dir, f"{name}.params"))
        if name == "lenet5":
            net.collect_params().save(os.path.join(out_dir, f"{name}-prefixed.params"))
        logits[name] = net(nd.array(test_x)).asnumpy()
        print(name, "trained; accuracy on the 100 images:",
              float((logits[name].argmax(1) == read_idx("t10k-labels-idx1-ubyte.gz")[:100]).mean()))
    np.savez(os.path.join(out_dir, "lenets_logits.npz"), mxnet=np.array(mx.__version__), **logits)
    with open(os.path.join(out_dir, "lenet-avg.json"), "w") as f:
        json.dump(LENET_AVG, f, indent=1)
        f.write("\n")


# lenet-avg as a jaxlenet spec (jaxlenet.specs): what `jaxlenet import-mxnet --model` takes.
LENET_AVG = {"name": "lenet-avg", "input": [1, 28, 28], "init": "uniform", "layers": [
    {"kind": "conv", "channels": 6, "kernel": 5, "activation": "relu"},
    {"kind": "pool", "pool": "avg", "window": 2},
    {"kind": "conv", "channels": 16, "kernel": 5, "activation": "relu"},
    {"kind": "pool", "pool": "avg", "window": 2},
    {"kind": "flatten"},
    {"kind": "dense", "units": 120, "activation": "relu"},
    {"kind": "dense", "units": 10}]}


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/mxnet")

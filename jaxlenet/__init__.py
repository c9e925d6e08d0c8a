"""jaxlenet: the MXNet/Gluon convolutional-network chapter (convolution, pooling, LeNet on
Fashion-MNIST), exact to MXNet 1.9.1 and fast, in JAX.

Quick start::

    from jaxlenet import data, models, train
    params, history = train.fit(train.Config(), data.load_fashion_mnist(), out_dir="runs/lenet")

or, from a shell, ``jaxlenet train`` (``jaxlenet --help`` lists the commands).

Modules, from the bottom up:

- ``layers``: the reference core, pure functions on ``lax.conv_general_dilated`` and
  ``lax.reduce_window`` (conv, pool, dense, activations, corr2d) and ``(init, apply)`` layers.
- ``fast``: faster formulations of the same layers for the CPU, each tested against the reference.
- ``nd``: MXNet's ``mx.nd`` ops with MXNet's names, arguments and numbers.
- ``models``: the tutorial's ``lenet`` and ``lenet5``, in either implementation.
- ``data``: the real Fashion-MNIST, verified, cached, downloaded if need be.
- ``train``: ``Config``, the compiled epoch, evaluation, ``fit`` with checkpoints and resumption.
- ``export``: a trained model as portable StableHLO.
- ``cli``: the ``jaxlenet`` command.
"""

__version__ = "0.2.0"

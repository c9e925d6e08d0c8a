"""``corr2d`` from scratch, edge detection, and a convolution kernel learned from data: the 6x8
image with a dark stripe, the kernel [[1, -1]], ten gradient steps on the squared error."""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from jaxlenet import layers


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10, help="gradient steps (the tutorial: 10)")
    parser.add_argument("--lr", type=float, default=3e-2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    X = jnp.arange(9.0).reshape(3, 3)
    K = jnp.array([[0.0, 1.0], [2.0, 3.0]])
    print(f"corr2d(X, K):\n{np.asarray(layers.corr2d(X, K))}\n")

    X = jnp.ones((6, 8)).at[:, 2:6].set(0)
    K = jnp.array([[1.0, -1.0]])
    Y = layers.corr2d(X, K)
    print(f"X:\n{np.asarray(X)}\nY = corr2d(X, [[1, -1]]):\n{np.asarray(Y)}\n")
    print(f"corr2d(X.T, K) (the kernel sees only vertical edges):\n"
          f"{np.asarray(layers.corr2d(X.T, K))}\n")

    # A 1x2 convolution layer (Gluon's nn.Conv2D(1, kernel_size=(1, 2))), learned from (X, Y).
    conv = layers.Conv(1, (1, 2), use_bias=False)
    _, params = conv.init(jax.random.PRNGKey(args.seed), (1, 1, 6, 8))
    X4, Y4 = X.reshape(1, 1, 6, 8), Y.reshape(1, 1, 6, 7)

    @jax.jit
    def step(params):
        loss, grads = jax.value_and_grad(lambda p: jnp.sum((conv.apply(p, X4) - Y4) ** 2))(params)
        return jax.tree_util.tree_map(lambda p, g: p - args.lr * g, params, grads), loss

    for i in range(args.epochs):
        params, loss = step(params)
        if (i + 1) % 2 == 0:
            print(f"batch {i + 1}, loss {float(loss):.3f}")
    print(f"learned kernel: {np.asarray(params['weight']).reshape(1, 2).round(4).tolist()}")

    # The other tutorial's cell: one dark column (X[:, 4:5] = 0), Gluon's Conv2D(1, (1, 2)) with
    # MXNet's default init, lr 0.016 on the summed squared error, ten steps; like the tutorial's
    # `conv2d.weight.data()[:] -= ...`, only the weight is updated, the bias stays 0.
    X = jnp.ones((6, 8)).at[:, 4:5].set(0)
    Y = layers.corr2d(X, K)
    print(np.asarray(X), np.asarray(K), np.asarray(Y))
    conv = layers.Conv(1, (1, 2))
    _, params = conv.init(jax.random.PRNGKey(args.seed), (1, 1, 6, 8))
    X4, Y4 = X.reshape(1, 1, 6, 8), Y.reshape(1, 1, 6, 7)

    @jax.jit
    def step_weight_only(params):
        loss, grads = jax.value_and_grad(lambda p: jnp.sum((Y4 - conv.apply(p, X4)) ** 2))(params)
        return {**params, "weight": params["weight"] - 16e-3 * grads["weight"]}, loss

    for i in range(10):
        params, loss = step_weight_only(params)
        print(f"NO.{i + 1}, loss:{float(loss):.3f}")
    print(np.asarray(params["weight"]).reshape((1, 2)))


if __name__ == "__main__":
    main()

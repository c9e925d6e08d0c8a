"""LeNet from scratch, as the tutorial writes it: explicit parameters W1, b1 ... W4, b4 (normal,
scale 0.01), the network in ``nd`` ops, the verbose shape printout, and hand-written SGD on the
summed loss with learning rate lr / batch_size."""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from jaxlenet import data, nd


def net(params, X, verbose=False):
    W1, b1, W2, b2, W3, b3, W4, b4 = params
    # first conv layer
    h1_conv = nd.Convolution(data=X, weight=W1, bias=b1, kernel=W1.shape[2:],
                             num_filter=W1.shape[0])
    h1_activation = nd.relu(h1_conv)
    h1 = nd.Pooling(data=h1_activation, pool_type="max", kernel=(2, 2), stride=(2, 2))
    # second conv layer
    h2_conv = nd.Convolution(data=h1, weight=W2, bias=b2, kernel=W2.shape[2:],
                             num_filter=W2.shape[0])
    h2_activation = nd.relu(h2_conv)
    h2 = nd.Pooling(data=h2_activation, pool_type="max", kernel=(2, 2), stride=(2, 2))
    h2 = nd.flatten(h2)
    # first fully connected layer
    h3_linear = nd.dot(h2, W3) + b3[None]
    h3 = nd.relu(h3_linear)
    # second fully connected layer
    h4_linear = nd.dot(h3, W4) + b4[None]
    if verbose:
        print("1st conv block:", h1.shape)
        print("2nd conv block:", h2.shape)
        print("1st dense:", h3.shape)
        print("2nd dense:", h4_linear.shape)
    return h4_linear


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--limit", type=int, help="train on the first N images only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir")
    args = parser.parse_args()

    (train_x, train_y), (test_x, test_y) = data.load_fashion_mnist(args.data_dir)
    train_x, train_y = train_x[:args.limit], train_y[:args.limit]
    train_x, test_x = data.to_float_nchw(train_x), data.to_float_nchw(test_x)

    weight_scale = 0.01
    keys = jax.random.split(jax.random.PRNGKey(args.seed), 5)
    W1 = nd.random_normal(shape=(20, 1, 5, 5), scale=weight_scale, key=keys[0])  # 20 5x5 filters
    b1 = nd.zeros(W1.shape[0])
    W2 = nd.random_normal(shape=(50, 20, 3, 3), scale=weight_scale, key=keys[1])  # 50 3x3 filters
    b2 = nd.zeros(W2.shape[0])
    W3 = nd.random_normal(shape=(1250, 128), scale=weight_scale, key=keys[2])  # 128 outputs
    b3 = nd.zeros(W3.shape[1])
    W4 = nd.random_normal(shape=(W3.shape[1], 10), scale=weight_scale, key=keys[3])
    b4 = nd.zeros(W4.shape[1])
    params = [W1, b1, W2, b2, W3, b3, W4, b4]

    net(params, jnp.asarray(train_x[:args.batch_size]), verbose=True)

    softmax_cross_entropy = nd.SoftmaxCrossEntropyLoss()

    @jax.jit
    def sgd_step(params, X, y):
        # autograd.record(); loss.backward() on the per-example losses sums them.
        def total_loss(params):
            losses = softmax_cross_entropy(net(params, X), y)
            return jnp.sum(losses), (losses, net(params, X))
        (_, (losses, output)), grads = jax.value_and_grad(total_loss, has_aux=True)(params)
        step = args.lr / args.batch_size  # utils.SGD(params, learning_rate / batch_size)
        params = [p - step * g for p, g in zip(params, grads)]
        return params, jnp.mean(losses), jnp.mean(jnp.argmax(output, axis=1) == y)

    @jax.jit
    def accuracy(params, X, y):
        return jnp.sum(jnp.argmax(net(params, X), axis=1) == y)

    def evaluate_accuracy(params):
        correct = sum(int(accuracy(params, jnp.asarray(test_x[i:i + 1000]),
                                   jnp.asarray(test_y[i:i + 1000])))
                      for i in range(0, len(test_x), 1000))
        return correct / len(test_x)

    shuffle_key = keys[4]
    for epoch in range(args.epochs):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(shuffle_key, epoch),
                                                  len(train_x)))
        train_loss = train_acc = 0.0
        batches = range(0, len(order), args.batch_size)
        for start in batches:
            index = order[start:start + args.batch_size]
            params, loss, acc = sgd_step(params, jnp.asarray(train_x[index]),
                                         jnp.asarray(train_y[index]))
            train_loss += float(loss)
            train_acc += float(acc)
        test_acc = evaluate_accuracy(params)
        print(f"Epoch {epoch}. Loss: {train_loss / len(batches):f}, "
              f"Train acc {train_acc / len(batches):f}, Test acc {test_acc:f}")


if __name__ == "__main__":
    main()

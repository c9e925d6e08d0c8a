"""Every number the tutorial prints for convolution and pooling, through ``jaxlenet.nd`` exactly as
the tutorial calls ``mxnet.nd``."""

import jax
import numpy as np

from jaxlenet import nd


def test_single_channel_convolution():
    w = nd.arange(4).reshape((1, 1, 2, 2))
    b = nd.array([1])
    data = nd.arange(9).reshape((1, 1, 3, 3))
    out = nd.Convolution(data, w, b, kernel=w.shape[2:], num_filter=w.shape[1])
    np.testing.assert_array_equal(out, [[[[20, 26], [38, 44]]]])
    out = nd.Convolution(data, w, b, kernel=w.shape[2:], num_filter=w.shape[1],
                         stride=(2, 2), pad=(1, 1))
    np.testing.assert_array_equal(out, [[[[1, 9], [22, 44]]]])


def test_two_input_channels():
    w = nd.arange(8).reshape((1, 2, 2, 2))
    data = nd.arange(18).reshape((1, 2, 3, 3))
    out = nd.Convolution(data, w, nd.array([1]), kernel=w.shape[2:], num_filter=w.shape[0])
    np.testing.assert_array_equal(out, [[[[269, 297], [353, 381]]]])


def test_two_output_channels_with_two_biases():
    w = nd.arange(16).reshape((2, 2, 2, 2))
    data = nd.arange(18).reshape((1, 2, 3, 3))
    b = nd.array([1, 2])
    out = nd.Convolution(data, w, b, kernel=w.shape[2:], num_filter=w.shape[0])
    np.testing.assert_array_equal(out, [[[[269, 297], [353, 381]], [[686, 778], [962, 1054]]]])


def test_1x1_kernel_with_three_input_channels_is_a_matmul():
    X = nd.random_normal(shape=(1, 3, 3, 3), key=jax.random.PRNGKey(1))
    K = nd.random_normal(shape=(2, 3, 1, 1), key=jax.random.PRNGKey(2))
    out = nd.Convolution(X, K, kernel=(1, 1), num_filter=2, no_bias=True)
    expected = (K.reshape(2, 3) @ X.reshape(3, 9)).reshape(1, 2, 3, 3)
    assert out.shape == (1, 2, 3, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_max_and_avg_pooling_of_arange_18():
    data = nd.arange(18).reshape((1, 2, 3, 3))
    max_pool = nd.Pooling(data=data, pool_type="max", kernel=(2, 2))
    avg_pool = nd.Pooling(data=data, pool_type="avg", kernel=(2, 2))
    np.testing.assert_array_equal(max_pool, [[[[4, 5], [7, 8]], [[13, 14], [16, 17]]]])
    np.testing.assert_array_equal(avg_pool, [[[[2, 3], [5, 6]], [[11, 12], [14, 15]]]])


def test_padding_and_stride_on_arange_16():
    X = nd.arange(16).reshape((1, 1, 4, 4))
    np.testing.assert_array_equal(nd.Pooling(X, kernel=(3, 3), stride=(3, 3)), [[[[10]]]])
    np.testing.assert_array_equal(nd.Pooling(X, kernel=(3, 3), pad=(1, 1), stride=(2, 2)),
                                  [[[[5, 7], [13, 15]]]])
    np.testing.assert_array_equal(nd.Pooling(X, kernel=(2, 3), pad=(1, 2), stride=(2, 3)),
                                  [[[[0, 3], [8, 11], [12, 15]]]])  # as MXNet 1.9.1 prints
    X2 = np.concatenate([np.asarray(X), np.asarray(X) + 1], axis=1)
    np.testing.assert_array_equal(nd.Pooling(nd.array(X2), kernel=(3, 3), pad=(1, 1),
                                             stride=(2, 2)),
                                  [[[[5, 7], [13, 15]], [[6, 8], [14, 16]]]])


def test_convolution_output_shapes_with_padding_and_stride():
    X = nd.random_normal(shape=(1, 1, 8, 8))
    cases = [((3, 3), (1, 1), (1, 1), (8, 8)), ((5, 3), (2, 1), (1, 1), (8, 8)),
             ((3, 3), (1, 1), (2, 2), (4, 4)), ((3, 5), (0, 1), (3, 4), (2, 2))]
    for kernel, pad, stride, shape in cases:
        w = nd.ones((1, 1) + kernel)
        out = nd.Convolution(X, w, kernel=kernel, pad=pad, stride=stride, num_filter=1,
                             no_bias=True)
        assert out.shape[2:] == shape


def test_constructors_default_to_float32():
    assert nd.arange(3).dtype == np.float32
    assert nd.array(np.arange(3.0)).dtype == np.float32
    assert nd.zeros((2,)).dtype == nd.ones((2,)).dtype == np.float32
    np.testing.assert_array_equal(nd.arange(0, 3, repeat=2), [0, 0, 1, 1, 2, 2])

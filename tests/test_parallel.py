"""Data-parallel training over a 'data' mesh axis: the same parameters as one device with the same
global batch, within float32 rounding. conftest.py gives this process 4 simulated CPU devices."""

import jax
import numpy as np
import pytest
from test_train import small_dataset

from jaxlenet import train


@pytest.mark.skipif(len(jax.devices("cpu")) < 4, reason="needs 4 (simulated) CPU devices")
@pytest.mark.parametrize("devices", [2, 4])
def test_sharded_training_equals_one_device(devices):
    dataset = small_dataset(n_train=512, n_test=100)
    config = train.Config(epochs=2, batch_size=64, lr=0.05)
    one, history_one = train.fit(config, dataset, device="cpu", devices=1, log=lambda _: None)
    many, history_many = train.fit(config, dataset, device="cpu", devices=devices,
                                   log=lambda _: None)
    for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(many)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    for a, b in zip(history_one, history_many):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=0.011)


def test_the_batch_must_divide_over_the_devices():
    if len(jax.devices("cpu")) < 3:
        pytest.skip("needs 3 (simulated) CPU devices")
    with pytest.raises(ValueError, match="does not divide evenly over 3 devices"):
        train.fit(train.Config(batch_size=64), small_dataset(64, 10), device="cpu", devices=3)
    with pytest.raises(ValueError, match="devices 99"):
        train.make_mesh("cpu", 99)

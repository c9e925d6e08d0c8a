"""Models and training: the gradient convention is the tutorial's, runs are deterministic,
resumption is exact, divergence stops cleanly."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlenet import checkpoint, devices, layers, models, nd, runs, train
from jaxlenet.losses import softmax_cross_entropy


def small_dataset(n_train=600, n_test=130, seed=0):
    """Random uint8 images whose label is a function of the image, so training can learn it."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n_train + n_test, 28, 28), dtype=np.uint8)
    labels = (images[:, 10:18, 10:18].mean(axis=(1, 2)) // 12.8).astype(np.int32) % 10
    return (images[:n_train], labels[:n_train]), (images[n_train:], labels[n_train:])


def test_lenet_is_the_tutorials_nd_network():
    """The model computes what the tutorial's from-scratch ``net`` computes with nd ops."""
    model = models.build("lenet")
    p = model.init(jax.random.PRNGKey(3))
    x = jax.random.uniform(jax.random.PRNGKey(4), (4, 1, 28, 28), jnp.float32)
    h1 = nd.Pooling(nd.relu(nd.Convolution(x, p["conv0"]["weight"], p["conv0"]["bias"],
                                           kernel=(5, 5), num_filter=20)),
                    pool_type="max", kernel=(2, 2), stride=(2, 2))
    h2 = nd.Pooling(nd.relu(nd.Convolution(h1, p["conv1"]["weight"], p["conv1"]["bias"],
                                           kernel=(3, 3), num_filter=50)),
                    pool_type="max", kernel=(2, 2), stride=(2, 2))
    h3 = nd.relu(nd.FullyConnected(nd.flatten(h2), p["dense0"]["weight"], p["dense0"]["bias"],
                                   num_hidden=128))
    out = nd.FullyConnected(h3, p["dense1"]["weight"], p["dense1"]["bias"], num_hidden=10)
    np.testing.assert_allclose(model.apply(p, x), out, rtol=1e-5, atol=1e-5)


def test_one_epoch_is_the_tutorials_sgd_with_the_last_batch_divided_by_batch_size():
    """Two batches of 4 (the second partial, 2 examples) by hand, against the compiled epoch."""
    config = train.Config(batch_size=4, lr=0.1, momentum=0.0, weight_decay=0.0,
                          schedule="constant", init="uniform")
    model, opt, params, opt_state, _ = train.initial_state(config)
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 6).astype(np.int32)
    key = jax.random.PRNGKey(9)
    epoch = train.make_train_epoch(model, opt, config.batch_size)
    got, _, loss, acc = epoch(jax.tree_util.tree_map(jnp.copy, params), opt_state,
                              jnp.asarray(images), jnp.asarray(labels), key)

    order = np.asarray(jax.random.permutation(key, 6))
    expected, losses, correct = params, [], 0
    for batch in (order[:4], order[4:]):
        x = jnp.asarray(images[batch], jnp.float32)[:, None] / 255.0
        y = jnp.asarray(labels[batch])

        def batch_loss(p, x, y):
            return jnp.sum(softmax_cross_entropy(model.apply(p, x), y)) / 4  # trainer.step(4)

        logits = jax.jit(model.apply)(expected, x)
        losses += list(softmax_cross_entropy(logits, y))
        correct += int(jnp.sum(jnp.argmax(logits, -1) == y))
        grads = jax.jit(jax.grad(batch_loss))(expected, x, y)
        expected = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, expected, grads)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss), np.mean(losses), rtol=1e-5)
    assert float(acc) == pytest.approx(correct / 6)


def test_evaluate_counts_every_example_once():
    """130 examples in batches of 32: the last batch holds 2. Only those 2 are labelled with the
    class the model picks, so the accuracy is 2/130 exactly when they count once (0 if dropped,
    more if padding counted); the output layer is scaled so that the losses differ by units and
    the mean moves visibly with any example dropped or counted twice."""
    model = models.build("lenet")
    params = model.init(jax.random.PRNGKey(0))
    params["dense1"]["weight"] = params["dense1"]["weight"] * 50
    (_, _), (x, _) = small_dataset(n_test=130)
    logits = np.asarray(model.apply(params, jnp.asarray(x, jnp.float32)[:, None] / 255.0),
                        np.float64)
    picked = logits.argmax(-1)
    y = np.where(np.arange(130) >= 128, picked, (picked + 1) % 10).astype(np.int32)
    shifted = logits - logits.max(-1, keepdims=True)
    losses = np.log(np.exp(shifted).sum(-1)) - shifted[np.arange(130), y]
    assert np.ptp(losses) > 2
    loss, acc = train.make_evaluate(model, batch_size=32)(params, jnp.asarray(x), jnp.asarray(y))
    assert float(acc) == pytest.approx(2 / 130, abs=1e-7)
    np.testing.assert_allclose(float(loss), losses.mean(), rtol=1e-5)
    assert abs(losses[:128].mean() - losses.mean()) > 1e-3  # what dropping the 2 would change


def test_training_learns_and_is_deterministic(tmp_path):
    config = train.Config(epochs=3, batch_size=32, lr=0.05)
    dataset = small_dataset()
    params_a, history = train.fit(config, dataset, log=lambda _: None)
    params_b, again = train.fit(config, dataset, log=lambda _: None)
    assert history[-1]["loss"] < history[0]["loss"]
    assert [m["loss"] for m in history] == [m["loss"] for m in again]
    for a, b in zip(jax.tree_util.tree_leaves(params_a), jax.tree_util.tree_leaves(params_b)):
        np.testing.assert_array_equal(a, b)


class _Interrupt(Exception):
    pass


def _interrupt_at(epoch):
    def log(line):
        if line.startswith(f"epoch {epoch} "):
            raise _Interrupt  # after the epoch ran, before its checkpoint was written
    return log


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_ends_with_the_parameters_of_an_uninterrupted_run(tmp_path, schedule):
    dataset = small_dataset()
    config = train.Config(epochs=3, batch_size=64, lr=0.05, momentum=0.9, schedule=schedule)
    whole, _ = train.fit(config, dataset, out_dir=tmp_path / "whole", log=lambda _: None)
    with pytest.raises(_Interrupt):
        train.fit(config, dataset, out_dir=tmp_path / "cut", log=_interrupt_at(2))
    assert [m["epoch"] for m in runs.read_metrics(tmp_path / "cut")] == [1]
    resumed, history = train.fit(config, dataset, out_dir=tmp_path / "cut", resume=True,
                                 log=lambda _: None)
    assert [m["epoch"] for m in history] == [1, 2, 3]
    assert [m["epoch"] for m in runs.read_metrics(tmp_path / "cut")] == [1, 2, 3]
    for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    _, _, saved, _, _, epoch = train.load_checkpoint(tmp_path / "cut")
    assert epoch == 3
    for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(saved)):
        np.testing.assert_array_equal(a, b)


def test_resume_may_extend_a_constant_rate_run(tmp_path):
    dataset = small_dataset(n_train=128, n_test=10)
    config = train.Config(epochs=2, batch_size=64, schedule="constant")
    whole, _ = train.fit(config, dataset, log=lambda _: None)
    train.fit(dataclasses.replace(config, epochs=1), dataset, out_dir=tmp_path, log=lambda _: None)
    resumed, _ = train.fit(config, dataset, out_dir=tmp_path, resume=True, log=lambda _: None)
    for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(a, b)


def test_resume_refuses_another_configuration(tmp_path):
    dataset = small_dataset(n_train=64, n_test=10)
    train.fit(train.Config(epochs=1, batch_size=32, lr=0.05), dataset, out_dir=tmp_path,
              log=lambda _: None)
    with pytest.raises(ValueError, match=r"trained with lr 0.05 \(asked: 0.3\); a resumed run "
                                         "keeps every setting but --epochs"):
        train.fit(train.Config(epochs=2, batch_size=32, lr=0.3), dataset, out_dir=tmp_path,
                  resume=True, log=lambda _: None)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    dataset = small_dataset(n_train=256, n_test=10)
    good = train.Config(epochs=1, batch_size=32, lr=0.05)
    train.fit(good, dataset, out_dir=tmp_path, log=lambda _: None)
    before = (tmp_path / runs.CHECKPOINT).read_bytes()
    with pytest.raises(train.TrainingDiverged, match="epoch 1"):
        train.fit(train.Config(epochs=2, batch_size=32, lr=1e9, momentum=0.0), dataset,
                  out_dir=tmp_path / "bad", log=lambda _: None)
    assert not (tmp_path / "bad" / runs.CHECKPOINT).exists()
    assert (tmp_path / runs.CHECKPOINT).read_bytes() == before


def test_a_loss_that_overflows_to_inf_without_a_nan_is_divergence(tmp_path):
    """Finite logits of +-3e38: an example whose class scores -3e38 has a cross-entropy of 6e38,
    inf in float32, while nothing is NaN (the saturated scores have zero gradients)."""
    saturate = layers.Layer(lambda key, shape: (shape, {}),
                            lambda params, x: jnp.clip(x * 1e38, -3e38, 3e38))
    model = models.from_layers((("flatten0", layers.Flatten()), ("dense0", layers.Dense(10)),
                                ("saturate", saturate)), name="saturating", impl="reference")
    dataset = small_dataset(n_train=64, n_test=10)
    params = model.init(jax.random.PRNGKey(0))
    logits = model.apply(params, jnp.asarray(dataset[0][0][:32, None], jnp.float32) / 255)
    assert bool(jnp.isfinite(logits).all())
    with pytest.raises(train.TrainingDiverged, match="epoch 1: the training loss is inf;"):
        train.fit(train.Config(epochs=2, batch_size=32, model="code:saturating"), dataset,
                  out_dir=tmp_path / "run", model=model, log=lambda _: None)
    assert not (tmp_path / "run").exists()


def test_tampered_and_truncated_checkpoints_are_refused(tmp_path):
    dataset = small_dataset(n_train=64, n_test=10)
    train.fit(train.Config(epochs=1, batch_size=32), dataset, out_dir=tmp_path, log=lambda _: None)
    path = tmp_path / runs.CHECKPOINT
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        train.load_checkpoint(tmp_path)
    path.write_bytes(raw)
    meta, arrays = checkpoint.read(path)
    arrays["params['dense1']['bias']"] = arrays["params['dense1']['bias']"] + 1
    _rewrite_checkpoint(path, meta, arrays)
    with pytest.raises(checkpoint.CheckpointError, match="checksum mismatch"):
        train.load_checkpoint(tmp_path)


def test_config_rejects_bad_values():
    for bad in ({"epochs": 0}, {"batch_size": -1}, {"lr": float("nan")}, {"lr": 0},
                {"momentum": 1.0}, {"model": "vgg"}, {"init": "he"}, {"epochs": 1.5}):
        with pytest.raises((ValueError, TypeError)):
            train.Config(**bad)


def test_every_seed_is_its_own_run():
    for seed in (0, 5, 2**31 + 3, 2**32 - 1):
        np.testing.assert_array_equal(train.seed_key(seed), jax.random.PRNGKey(seed))
    with jax.enable_x64(True):  # where PRNGKey takes all 64 bits of a seed
        for seed in (2**32 + 5, 2**63 - 1):
            np.testing.assert_array_equal(train.seed_key(seed), jax.random.PRNGKey(seed))
    low, high = (train.initial_state(train.Config(seed=seed))[2] for seed in (5, 2**32 + 5))
    assert not np.array_equal(low["conv0"]["weight"], high["conv0"]["weight"])


def test_optimizer_matches_mxnet_sgd_with_weight_decay_and_momentum():
    config = train.Config(lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.01,
                          schedule="constant")
    opt = train.optimizer(config)
    w = {"w": jnp.array([1.0, -2.0])}
    g = {"w": jnp.array([0.5, 0.25])}
    state = opt.init(w)
    mom = np.zeros(2)
    expected = np.array([1.0, -2.0])
    for _ in range(3):
        updates, state = opt.update(g, state, w)
        w = optax.apply_updates(w, updates)
        mom = 0.9 * mom + (np.array([0.5, 0.25]) + 0.01 * expected)  # MXNet: grad + wd * weight
        expected = expected - 0.1 * mom
    np.testing.assert_allclose(w["w"], expected, rtol=1e-6)


def _learning_rates(schedule: str, epochs: int, steps_per_epoch: int) -> np.ndarray:
    """The rate of each step, read off the optimiser: the update of a weight whose gradient is 1,
    without momentum or weight decay, is minus the rate."""
    config = train.Config(lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0,
                          schedule=schedule, epochs=epochs)
    opt = train.optimizer(config, steps_per_epoch)
    state, rates = opt.init(jnp.zeros(())), []
    for _ in range(epochs * steps_per_epoch):
        update, state = opt.update(jnp.ones(()), state)
        rates.append(-float(update))
    return np.array(rates)


def test_learning_rate_schedules_step_by_step():
    """Each schedule's rate at every step against its formula, written out here: one-cycle
    rises along a half cosine from lr/25 to lr over the first 30% of the steps, then falls along
    a half cosine to lr/25e4; cosine falls from lr to 0."""
    total, peak = 2 * 50, 0.1
    steps = np.arange(total)

    def half_cosine(start, end, fraction):
        return end + (start - end) * (1 + np.cos(np.pi * fraction)) / 2

    rise = int(0.3 * total)
    onecycle = np.where(steps <= rise, half_cosine(peak / 25, peak, steps / rise),
                        half_cosine(peak, peak / 25e4, (steps - rise) / (total - rise)))
    np.testing.assert_allclose(_learning_rates("onecycle", 2, 50), onecycle, rtol=1e-5, atol=1e-8)
    assert onecycle[0] == pytest.approx(0.004) and onecycle[rise] == pytest.approx(0.1)
    np.testing.assert_allclose(_learning_rates("cosine", 2, 50),
                               half_cosine(peak, 0.0, steps / total), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(_learning_rates("constant", 2, 50), np.full(total, peak),
                               rtol=1e-6)


def test_select_device():
    assert devices.select_device("cpu").platform == "cpu"
    if not any(d.platform == "gpu" for d in jax.devices()):
        assert devices.select_device("auto").platform == "cpu"
        with pytest.raises(ValueError, match="no GPU"):
            devices.select_device("gpu")


def _rewrite_checkpoint(path, meta, arrays):
    import io
    import json
    buffer = io.BytesIO()
    np.savez(buffer, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    path.write_bytes(buffer.getvalue())


def test_tampered_checkpoint_metadata_is_refused(tmp_path):
    dataset = small_dataset(n_train=64, n_test=10)
    train.fit(train.Config(epochs=1, batch_size=32), dataset, out_dir=tmp_path, log=lambda _: None)
    path = tmp_path / runs.CHECKPOINT
    meta, arrays = checkpoint.read(path)
    _rewrite_checkpoint(path, {**meta, "epoch": 5}, arrays)
    with pytest.raises(checkpoint.CheckpointError, match="checksum mismatch"):
        train.load_checkpoint(tmp_path)


def test_a_tampered_metrics_file_is_reported_and_rewritten_on_resume(tmp_path):
    dataset = small_dataset(n_train=64, n_test=10)
    config = train.Config(epochs=2, batch_size=32, schedule="constant")
    train.fit(dataclasses.replace(config, epochs=1), dataset, out_dir=tmp_path, log=lambda _: None)
    genuine = runs.read_metrics(tmp_path)
    (tmp_path / runs.METRICS).write_text('{"epoch": 1, "loss": 0.01, "test_acc": 0.99}\n'
                                          '{"epoch": 7}\n')
    warnings = []
    assert runs.load_history(tmp_path, warn=warnings.append) == genuine
    assert len(warnings) == 1 and "does not match the checkpoint" in warnings[0]
    (tmp_path / runs.METRICS).write_text("not json\n")
    _, history = train.fit(config, dataset, out_dir=tmp_path, resume=True, log=lambda _: None)
    assert history[0] == genuine[0] and [m["epoch"] for m in history] == [1, 2]
    assert runs.read_metrics(tmp_path) == history

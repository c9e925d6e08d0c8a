"""Training: softmax cross-entropy, optax SGD, a whole epoch as one compiled call, evaluation,
``fit`` with per-epoch metrics and checkpoints, and exact resumption.

The gradient convention is the tutorial's: ``loss.sum()`` over the batch, then
``trainer.step(batch_size)``, i.e. the sum of per-example losses divided by the batch size (the
mean loss; the last, partial batch is kept and still divided by ``batch_size``, as in MXNet).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import pathlib
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh

from jaxlenet import checkpoint, data, models
from jaxlenet._files import atomic_write
from jaxlenet.devices import make_mesh, replicate, shard_examples, summed_over_batch_shards, to_host
from jaxlenet.losses import softmax_cross_entropy


@dataclasses.dataclass(frozen=True)
class Config:
    """One training run; the command line is built from it and every checkpoint records it."""
    model: str = "lenet"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    init: str = "xavier"
    schedule: str = "cosine"
    seed: int = 0
    impl: str = "auto"

    def __post_init__(self):
        if self.model not in models.MODELS:
            raise ValueError(f"model {self.model!r} is not one of {tuple(models.MODELS)}")
        for name in ("epochs", "batch_size", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs {self.epochs} must be at least 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size {self.batch_size} must be at least 1")
        if self.seed < 0:
            raise ValueError(f"seed {self.seed} must not be negative")
        for name in ("lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} {value!r} must be a finite number >= 0")
        if self.lr == 0:
            raise ValueError("lr 0 would not train: it must be > 0")
        if self.momentum >= 1:
            raise ValueError(f"momentum {self.momentum} must be below 1")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} is not one of {SCHEDULES}")
        if self.init not in ("uniform", "normal", "xavier"):
            raise ValueError(f"init {self.init!r} is not one of ('uniform', 'normal', 'xavier')")
        if self.impl not in models.IMPLS:
            raise ValueError(f"impl {self.impl!r} is not one of {models.IMPLS}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


SCHEDULES = ("constant", "cosine")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


def optimizer(config: Config, steps_per_epoch: int = 1) -> optax.GradientTransformation:
    """SGD as MXNet's: weight decay added to the gradient, then (Nesterov) momentum. The learning
    rate is ``config.lr`` throughout ('constant'), or decays to 0 along a half cosine over all
    ``config.epochs * steps_per_epoch`` steps ('cosine')."""
    lr = config.lr
    if config.schedule == "cosine":
        lr = optax.cosine_decay_schedule(config.lr, max(config.epochs * steps_per_epoch, 1))
    sgd = optax.sgd(lr, momentum=config.momentum or None, nesterov=config.nesterov)
    if config.weight_decay:
        return optax.chain(optax.add_decayed_weights(config.weight_decay), sgd)
    return sgd


def _to_images(batch):
    """uint8 (B, 28, 28) -> float32 (B, 1, 28, 28) in [0, 1]."""
    return (batch.astype(jnp.float32) / 255.0)[:, None]


def _masked_totals(logits, labels, valid):
    """(sum of the losses, number correct) over the examples of a batch marked ``valid``."""
    losses = softmax_cross_entropy(logits, labels)
    correct = jnp.argmax(logits, axis=-1) == labels
    return (jnp.sum(jnp.where(valid, losses, 0.0)),
            jnp.sum(jnp.where(valid, correct, False), dtype=jnp.int32))


def make_train_epoch(model: models.Model, opt: optax.GradientTransformation, batch_size: int,
                     *, progress: Callable[[int, int], None] | None = None,
                     mesh: Mesh | None = None):
    """A jitted ``epoch(params, opt_state, images, labels, key) -> (params, opt_state, mean loss,
    train accuracy)`` (both accumulated during the epoch, as the tutorial does) over uint8 images
    (N, 28, 28) and int labels (N,) already on the device(s), shuffled by ``key``: one compiled
    call (a ``lax.scan`` over batches), one host sync. With a ``mesh`` (``devices.make_mesh``),
    each batch is split over its 'data' axis, the parameters are replicated, and each device's
    gradients are summed across devices. ``progress(done, total)`` is called from inside the scan
    every few batches, if given."""
    def loss_fn(params, x, y, valid):
        loss_sum, correct = _masked_totals(model.apply(params, x), y, valid)
        return loss_sum / batch_size, (loss_sum, correct)

    # Every output is a sum over the batch's examples (the loss divided by the whole batch's
    # size), so each device's share adds up to the batch's.
    loss_and_grads = summed_over_batch_shards(jax.value_and_grad(loss_fn, has_aux=True), mesh,
                                              batch_size)

    def epoch(params, opt_state, images, labels, key):
        num_examples = images.shape[0]
        order, mask = data.batch_indices(key, num_examples, batch_size)
        num_batches = order.shape[0]

        def step(carry, batch):
            params, opt_state = carry
            index, valid, i = batch
            (_, totals), grads = loss_and_grads(params, _to_images(images[index]), labels[index],
                                                valid)
            updates, opt_state = opt.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            if progress is not None:
                every = max(num_batches // 50, 1)
                lax.cond(i % every == every - 1,
                         lambda: jax.debug.callback(progress, i + 1, num_batches), lambda: None)
            return (params, opt_state), totals

        (params, opt_state), (loss_sums, corrects) = lax.scan(
            step, (params, opt_state), (order, mask, jnp.arange(num_batches)))
        return (params, opt_state, jnp.sum(loss_sums) / num_examples,
                jnp.sum(corrects) / num_examples)

    return jax.jit(epoch, donate_argnums=(0, 1), compiler_options=model.compiler_options)


def make_evaluate(model: models.Model, batch_size: int = 1000, *, mesh: Mesh | None = None):
    """A jitted ``evaluate(params, images, labels) -> (mean loss, accuracy)`` in which every
    example counts exactly once (a partial last batch is masked, not dropped); batches split over
    ``mesh`` like ``make_train_epoch``'s."""
    totals = summed_over_batch_shards(
        lambda params, x, y, valid: _masked_totals(model.apply(params, x), y, valid), mesh,
        batch_size)

    def evaluate(params, images, labels):
        order, mask = data.batch_indices(None, images.shape[0], batch_size, shuffle=False)

        def body(sums, batch):
            index, valid = batch
            loss_sum, correct = totals(params, _to_images(images[index]), labels[index], valid)
            return (sums[0] + loss_sum, sums[1] + correct), None

        zero = jnp.zeros((), jnp.float32)
        (loss_sum, correct), _ = lax.scan(body, (zero, jnp.zeros((), jnp.int32)), (order, mask))
        return loss_sum / images.shape[0], correct / images.shape[0]

    return jax.jit(evaluate, compiler_options=model.compiler_options)


# -------------------------------------------------------------------------------------------- fit


class RunLocked(RuntimeError):
    """Another process is training into the same run directory."""


@contextlib.contextmanager
def run_lock(out_dir):
    """Holds an exclusive lock on ``out_dir/.lock`` for the life of a run, so two ``train``
    commands never interleave their checkpoints; the OS drops it if the process dies."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"another run is training into {out} (it holds "
                            f"{out / '.lock'})") from None
        try:
            yield out
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"


def initial_state(config: Config, steps_per_epoch: int = 1, *, platform: str | None = None):
    """(model, optimiser, params, opt_state, shuffle key) for a fresh run; the model in the
    implementation ``config.impl`` picks for ``platform`` (default: JAX's default backend)."""
    model = models.build(config.model, init=config.init, impl=config.impl, platform=platform)
    opt = optimizer(config, steps_per_epoch)
    init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(config.seed))
    params = model.init(init_key)
    return model, opt, params, opt.init(params), shuffle_key


def load_checkpoint(path, *, impl: str | None = None, platform: str | None = None):
    """(config, model, params, opt_state, shuffle key, epochs done) from a checkpoint file or the
    run directory holding one. The model runs the implementation the run chose for ``platform``
    (``config.impl``), or ``impl`` if given: parameters are the same in every implementation."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    meta, arrays = checkpoint.read(path)
    try:
        config = Config.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise checkpoint.CheckpointError(
            f"{path}: bad configuration in checkpoint ({exc})") from None
    model, opt, params, opt_state, key = initial_state(
        dataclasses.replace(config, impl=impl or config.impl), platform=platform)
    params = checkpoint.restore(arrays, "params", params)
    opt_state = checkpoint.restore(arrays, "opt_state", opt_state)
    key = checkpoint.restore(arrays, "key", key)
    return config, model, params, opt_state, key, int(meta["epoch"])


def fit(config: Config, dataset, *, out_dir=None, resume: bool = False, device: str = "auto",
        devices: int | None = None, log: Callable[[str], None] = print, progress: bool = False,
        limit: int | None = None):
    """Trains ``config`` on ``dataset`` = ((train_images, train_labels), (test_images,
    test_labels)) (uint8 (N, 28, 28), int labels). Per epoch: logs one line, appends to
    ``out_dir/metrics.jsonl`` and writes ``out_dir/checkpoint.npz`` atomically. ``resume``
    continues from that checkpoint and ends with exactly the parameters of an uninterrupted run.
    ``devices`` is how many devices of the chosen platform share each batch (default: all; the
    batch size must divide evenly); only process 0 of a multi-process run writes files.
    ``limit`` keeps the first ``limit`` training examples (for smoke runs).
    Returns (params, history: list of per-epoch dicts)."""
    (train_x, train_y), (test_x, test_y) = dataset
    if limit is not None:
        train_x, train_y = train_x[:limit], train_y[:limit]
    mesh = make_mesh(device, devices)
    platform = mesh.devices.flat[0].platform
    if config.batch_size % mesh.size:
        raise ValueError(f"batch size {config.batch_size} does not divide evenly over "
                         f"{mesh.size} devices; choose a multiple of {mesh.size} or --devices")
    steps_per_epoch = -(-len(train_x) // config.batch_size)
    out = pathlib.Path(out_dir) if out_dir and jax.process_index() == 0 else None
    start, history = 0, []
    if resume:
        if not out_dir or not (pathlib.Path(out_dir) / CHECKPOINT).exists():
            raise checkpoint.CheckpointError(f"--resume: no checkpoint in {out_dir}")
        saved, model, params, opt_state, key, start = load_checkpoint(out_dir, platform=platform)
        if dataclasses.replace(saved, epochs=config.epochs) != config:
            raise ValueError(f"--resume: the checkpoint in {out_dir} was written with {saved}, "
                             f"which differs from {config} in more than epochs")
        if saved.schedule == "cosine" and saved.epochs != config.epochs:
            raise ValueError(f"--resume: the run in {out_dir} decays its learning rate over "
                             f"{saved.epochs} epochs (cosine schedule) and cannot be extended "
                             f"to {config.epochs}; start a new run instead")
        history = load_history(out_dir)
        opt = optimizer(config, steps_per_epoch)
    else:
        model, opt, params, opt_state, key = initial_state(config, steps_per_epoch,
                                                            platform=platform)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _write_metrics(out, history)

    train_x, train_y, test_x, test_y = shard_examples((train_x, train_y, test_x, test_y), mesh)
    params, opt_state = replicate((params, opt_state), mesh)
    show = _progress_bar if progress and jax.process_index() == 0 else None
    train_epoch = make_train_epoch(model, opt, config.batch_size, progress=show, mesh=mesh)
    evaluate = make_evaluate(model, mesh=mesh)

    for epoch in range(start + 1, config.epochs + 1):
        began = time.perf_counter()
        params, opt_state, loss, train_acc = train_epoch(params, opt_state, train_x, train_y,
                                              jax.random.fold_in(key, epoch))
        loss = float(to_host(loss))
        seconds = time.perf_counter() - began
        if progress:
            print("\r" + " " * 60 + "\r", end="", file=sys.stderr)
        if not math.isfinite(loss):
            kept = (f"the checkpoint of epoch {epoch - 1} in {out} is intact"
                    if out is not None and epoch > 1 else "no checkpoint was written")
            raise TrainingDiverged(f"epoch {epoch}: the training loss is {loss}; stopped ({kept}). "
                                   f"Try a smaller learning rate than {config.lr}")
        test_loss, test_acc = to_host(evaluate(params, test_x, test_y))
        record = {"epoch": epoch, "loss": round(loss, 6),
                  "train_acc": round(float(to_host(train_acc)), 6),
                  "test_acc": round(float(test_acc), 6), "test_loss": round(float(test_loss), 6),
                  "seconds": round(seconds, 3)}
        history.append(record)
        log(f"epoch {epoch}  loss {loss:.4f}  train acc {record['train_acc']:.3f}  "
            f"test acc {record['test_acc']:.3f}  time {seconds:.1f} s")
        if out is not None:
            checkpoint.save(out / CHECKPOINT,
                            to_host({"params": params, "opt_state": opt_state, "key": key}),
                            {"epoch": epoch, "config": config.to_dict(), "impl": model.impl,
                             "history": history})
            _write_metrics(out, history)
    return to_host(params), history


def _progress_bar(done, total):
    done, total = int(done), int(total)
    width = 30
    filled = width * done // total
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} batches", end="",
          file=sys.stderr, flush=True)


def load_history(out_dir, *, warn: Callable[[str], None] | None = None) -> list[dict]:
    """The per-epoch records of the run in ``out_dir``, from its checksummed checkpoint. A
    ``metrics.jsonl`` that disagrees with them (edited, truncated, or from later epochs that never
    reached a checkpoint) is reported through ``warn`` and rewritten from the checkpoint."""
    meta, _ = checkpoint.read(pathlib.Path(out_dir) / CHECKPOINT)
    history = meta.get("history", [])
    try:
        on_disk = read_metrics(out_dir)
    except ValueError:
        on_disk = None
    if on_disk != history:
        (warn or _stderr)(f"jaxlenet: {pathlib.Path(out_dir) / METRICS} does not match the "
                          f"checkpoint's record of {len(history)} epoch(s); rewriting it from "
                          "the checkpoint")
    return history


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def read_metrics(out_dir) -> list[dict]:
    path = pathlib.Path(out_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_metrics(out: pathlib.Path, history: list[dict]) -> None:
    atomic_write(out / METRICS, "".join(json.dumps(r) + "\n" for r in history).encode())


def predict(model: models.Model, params, images) -> np.ndarray:
    """Class probabilities (N, 10) for float images (N, 1, 28, 28) in [0, 1]."""
    apply = jax.jit(model.apply, compiler_options=model.compiler_options)
    return np.asarray(jax.nn.softmax(apply(params, jnp.asarray(images)), axis=-1))

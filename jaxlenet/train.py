"""Training: softmax cross-entropy, optax SGD, a whole epoch as one compiled call, evaluation,
``fit`` with per-epoch metrics and checkpoints, and exact resumption.

The gradient convention is the tutorial's: ``loss.sum()`` over the batch, then
``trainer.step(batch_size)``, i.e. the sum of per-example losses divided by the batch size (the
mean loss; the last, partial batch is kept and still divided by ``batch_size``, as in MXNet).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
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

from jaxlenet import checkpoint, data, models, runs, specs
from jaxlenet.devices import make_mesh, replicate, shard_examples, summed_over_batch_shards, to_host
from jaxlenet.losses import softmax_cross_entropy


@dataclasses.dataclass(frozen=True)
class Config:
    """One training run; the command line is built from it and every checkpoint records it.
    ``model`` is a built-in network's name (``specs.BUILTIN``), a spec (``jaxlenet.specs``,
    validated and completed here), or ``'code:NAME'`` for a network defined in code (what
    ``fit(..., model=...)`` records)."""
    model: str | dict = "lenet"
    epochs: int = 6
    batch_size: int = 96
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    init: str = "xavier"
    schedule: str = "onecycle"
    seed: int = 0
    impl: str = "auto"
    limit: int | None = None
    label_smoothing: float = 0.0

    def __post_init__(self):
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", specs.validate(self.model))
        elif not isinstance(self.model, str):
            raise TypeError(f"model must be a network's name or a spec (a dict), got "
                            f"{self.model!r}")
        elif self.model not in specs.BUILTIN and not (
                self.model.startswith(IN_CODE) and len(self.model) > len(IN_CODE)):
            raise ValueError(f"model {self.model!r} is not one of {tuple(specs.BUILTIN)}, a "
                             f"spec, or {IN_CODE}NAME (a network defined in code)")
        for name in ("epochs", "batch_size", "seed", "limit"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, int)) and not (
                    name == "limit" and value is None):
                raise TypeError(f"{name} must be an int, got {value!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs {self.epochs} must be at least 1")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size {self.batch_size} must be between 1 and "
                             f"{MAX_BATCH_SIZE:,}")
        if not 0 <= self.seed < 2 ** 63:
            raise ValueError(f"seed {self.seed} must be between 0 and 2**63 - 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit {self.limit} must be at least 1")
        for name in ("lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            if (not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
                    or value > float(np.finfo(np.float32).max)):
                raise ValueError(f"{name} {value!r} must be a finite number >= 0 (in float32)")
        if not np.float32(self.lr) >= np.finfo(np.float32).tiny:
            raise ValueError(f"lr {self.lr!r} would not train: it must be at least "
                             f"{np.finfo(np.float32).tiny:.3g} (float32's smallest normal number)")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing {self.label_smoothing!r} must be in [0, 1)")
        if self.momentum >= 1:
            raise ValueError(f"momentum {self.momentum} must be below 1")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} is not one of {SCHEDULES}")
        if self.init not in ("uniform", "normal", "xavier"):
            raise ValueError(f"init {self.init!r} is not one of ('uniform', 'normal', 'xavier')")
        if self.impl not in models.IMPLS:
            raise ValueError(f"impl {self.impl!r} is not one of {models.IMPLS}")

    @property
    def network(self) -> str:
        """The network's name: a built-in's, a spec's, or one defined in code."""
        if isinstance(self.model, dict):
            return self.model["name"]
        return self.model.removeprefix(IN_CODE)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


SCHEDULES = ("constant", "cosine", "onecycle")
# Config.model of a network defined in code: its checkpoint cannot rebuild it.
IN_CODE = "code:"
# A batch larger than this would not fit in memory, nor in the dataset.
MAX_BATCH_SIZE = 60_000

# Named starting points for a Config (``Config(**RECIPES[name])``); fields given beside one win.
RECIPES = {
    "default": {},
    # The tutorial's LeNet: MXNet's default uniform(0.07) init, plain SGD at 0.5, batch 256.
    "tutorial": dict(model="lenet", epochs=10, batch_size=256, lr=0.5, momentum=0.0,
                     weight_decay=0.0, init="uniform", schedule="constant"),
    # The tutorial's LeNet-5: sigmoids, Xavier, plain SGD at 0.9, batch 256, 5 epochs.
    "tutorial-lenet5": dict(model="lenet5", epochs=5, batch_size=256, lr=0.9, momentum=0.0,
                            weight_decay=0.0, init="xavier", schedule="constant"),
}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


def optimizer(config: Config, steps_per_epoch: int = 1) -> optax.GradientTransformation:
    """SGD as MXNet's: weight decay added to the gradient, then (Nesterov) momentum. The learning
    rate is ``config.lr`` throughout ('constant'), decays to 0 along a half cosine over all
    ``config.epochs * steps_per_epoch`` steps ('cosine'), or rises from lr/25 to lr over the
    first 30% of them and falls along a cosine to lr/25e4 over the rest ('onecycle')."""
    lr = config.lr
    steps = max(config.epochs * steps_per_epoch, 1)
    if config.schedule == "cosine":
        lr = optax.cosine_decay_schedule(config.lr, steps)
    elif config.schedule == "onecycle":
        lr = optax.cosine_onecycle_schedule(steps, config.lr)
    sgd = optax.sgd(lr, momentum=config.momentum or None, nesterov=config.nesterov)
    if config.weight_decay:
        return optax.chain(optax.add_decayed_weights(config.weight_decay), sgd)
    return sgd


def _to_images(batch):
    """uint8 (B, 28, 28) -> float32 (B, 1, 28, 28) in [0, 1]."""
    return (batch.astype(jnp.float32) / 255.0)[:, None]


def _masked_totals(logits, labels, valid, label_smoothing: float = 0.0):
    """(sum of the losses, number correct) over the examples of a batch marked ``valid``; with
    ``label_smoothing`` e, each loss is against labels (1 - e) one-hot + e uniform."""
    losses = softmax_cross_entropy(logits, labels)
    if label_smoothing:
        uniform = -jnp.mean(jax.nn.log_softmax(logits, axis=-1), axis=-1)
        losses = (1 - label_smoothing) * losses + label_smoothing * uniform
    correct = jnp.argmax(logits, axis=-1) == labels
    return (jnp.sum(jnp.where(valid, losses, 0.0)),
            jnp.sum(jnp.where(valid, correct, False), dtype=jnp.int32))


def make_train_epoch(model: models.Model, opt: optax.GradientTransformation, batch_size: int,
                     *, progress: Callable[[int, int], None] | None = None,
                     mesh: Mesh | None = None, label_smoothing: float = 0.0):
    """A jitted ``epoch(params, opt_state, images, labels, key) -> (params, opt_state, mean loss,
    train accuracy)`` (both accumulated during the epoch, as the tutorial does) over uint8 images
    (N, 28, 28) and int labels (N,) already on the device(s), shuffled by ``key``: one compiled
    call (a ``lax.scan`` over batches), one host sync. With a ``mesh`` (``devices.make_mesh``),
    each batch is split over its 'data' axis, the parameters are replicated, and each device's
    gradients are summed across devices. ``progress(done, total)`` is called from inside the scan
    every few batches, if given."""
    def loss_fn(params, x, y, valid):
        loss_sum, correct = _masked_totals(model.apply(params, x), y, valid, label_smoothing)
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


def initial_state(config: Config, steps_per_epoch: int = 1, *, platform: str | None = None,
                  model: models.Model | None = None):
    """(model, optimiser, params, opt_state, shuffle key) for a fresh run; the model in the
    implementation ``config.impl`` picks for ``platform`` (default: JAX's default backend), or
    ``model`` if given."""
    model = model or build_model(config, platform)
    opt = optimizer(config, steps_per_epoch)

    # One program for the whole state, not one per key split and optimiser leaf: a first run
    # compiles each.
    @functools.partial(jax.jit, compiler_options=model.init_compiler_options)
    def fresh(key):
        init_key, shuffle_key = _run_keys(key)
        params = model.init(init_key)
        return params, opt.init(params), shuffle_key

    return model, opt, *fresh(seed_key(config.seed))


def _run_keys(key):
    """(the parameters' key, the shuffling's key) of a run seeded with ``key``."""
    return jax.random.split(key)


def seed_key(seed: int) -> jax.Array:
    """The PRNG key of ``seed`` (0 <= seed < 2**64): ``jax.random.PRNGKey(seed)`` as JAX makes
    it with 64-bit integers enabled. Without them PRNGKey keeps the low 32 bits only, and seeds
    5 and 2**32 + 5 would train the same run."""
    return jnp.asarray(np.array([seed >> 32, seed & 0xFFFFFFFF], np.uint32))


def build_model(config: Config, platform: str | None = None) -> models.Model:
    """The model ``config`` trains (a built-in network or a spec), in the implementation
    ``config.impl`` picks for ``platform``."""
    return models.build(config.model, init=config.init, impl=config.impl, platform=platform)


class DefinedInCode(checkpoint.CheckpointError):
    """A checkpoint of a network defined in code: only that code can rebuild it."""


def load_checkpoint(path, *, impl: str | None = None, platform: str | None = None,
                    model: models.Model | None = None):
    """(config, model, params, opt_state, shuffle key, epochs done) from a checkpoint file or the
    run directory holding one. The network is the one the checkpoint records (its spec; a
    checkpoint older than specs names a built-in network), or ``model`` if given, which a
    network defined in code needs. The model runs the implementation the run chose for
    ``platform`` (``config.impl``), or ``impl`` if given: parameters are the same in every
    implementation. Raises ``CheckpointError`` for a file that is damaged or does not fit the
    model, ``DefinedInCode`` for a network defined in code when no ``model`` is given."""
    path = _checkpoint_file(path)
    meta, arrays = checkpoint.read(path)
    config, epoch = _recorded_run(meta, path)
    if model is None:
        network = _recorded_network(meta, config, path)
        model = models.build(network, init=config.init, impl=impl or config.impl,
                             platform=platform)
    opt = optimizer(config, 1)
    # Shapes only: nothing is initialised (or compiled) just to be overwritten.
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    try:
        params = checkpoint.restore(arrays, "params", jax.eval_shape(model.init, key),
                                    finite=True)
        opt_state = checkpoint.restore(arrays, "opt_state", jax.eval_shape(opt.init, params),
                                       finite=True)
        key = checkpoint.restore(arrays, "key", key)
    except checkpoint.CheckpointError as exc:
        raise checkpoint.CheckpointError(f"{path}: {exc}") from None
    return config, model, params, opt_state, key, epoch


def read_network(path) -> dict:
    """The spec of the network the checkpoint in run directory ``path`` (or checkpoint file
    ``path``) trained; raises ``CheckpointError``, ``DefinedInCode`` for a network defined in
    code."""
    path = _checkpoint_file(path)
    meta = checkpoint.read(path)[0]
    return _recorded_network(meta, _recorded_run(meta, path)[0], path)


def _recorded_network(meta: dict, config: Config, path) -> dict:
    """The validated spec a checkpoint records (a later change of a built-in must not change an
    old run); a checkpoint from before specs were recorded names a built-in."""
    if (isinstance(config.model, str) and config.model.startswith(IN_CODE)) or (
            "spec" in meta and meta["spec"] is None):
        raise DefinedInCode(
            f"{path}: the network {config.network!r} is defined in code, so jaxlenet cannot "
            "rebuild it from the checkpoint; in Python, build it as you trained it and call "
            "train.load_checkpoint(path, model=models.from_layers(...)), then "
            "train.make_evaluate(model)")
    try:
        return specs.resolve(meta["spec"] if meta.get("spec") is not None else config.model)
    except specs.SpecError as exc:
        raise checkpoint.CheckpointError(f"{path}: bad network in checkpoint ({exc})") from None


def read_run(path) -> tuple[Config, int]:
    """(configuration, epochs done) of the checkpoint in run directory ``path``, or of the
    checkpoint file ``path``; raises ``CheckpointError``."""
    path = _checkpoint_file(path)
    return _recorded_run(checkpoint.read(path)[0], path)


def _checkpoint_file(path) -> pathlib.Path:
    path = pathlib.Path(path)
    return path / runs.CHECKPOINT if path.is_dir() else path


def _recorded_run(meta: dict, path) -> tuple[Config, int]:
    """The run's configuration and epochs done; the metadata is untrusted even behind a good
    checksum."""
    try:
        if not isinstance(meta.get("config"), dict):
            raise TypeError(f"config is {type(meta.get('config')).__name__}, not a record")
        config, epoch = Config.from_dict(meta["config"]), meta["epoch"]
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise checkpoint.CheckpointError(
            f"{path}: bad configuration in checkpoint ({str(exc)[:300]})") from None
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch <= config.epochs:
        raise checkpoint.CheckpointError(f"{path}: epoch {epoch!r} is not between 1 and the "
                                         f"run's {config.epochs} epochs")
    return config, epoch


def fit(config: Config, dataset, *, out_dir=None, resume: bool = False, device: str = "auto",
        devices: int | None = None, log: Callable[[str], None] = print,
        warn: Callable[[str], None] | None = None, announce: Callable[[str], None] | None = None,
        progress: bool = False, model: models.Model | None = None):
    """Trains ``config`` on ``dataset`` = ((train_images, train_labels), (test_images,
    test_labels)) (uint8 (N, 28, 28), int labels). Per epoch: logs one line and, with an
    ``out_dir``, writes ``checkpoint.npz`` and ``metrics.jsonl`` there atomically.

    ``out_dir`` is locked for the run (``runs.open_run``); one that holds a run is refused unless
    ``resume``, which continues it and ends with exactly the parameters of an uninterrupted run
    (every field of ``config`` but ``epochs`` must be the recorded one). ``devices`` is how many
    devices of the chosen platform share each batch (default: all; the batch size must divide
    evenly); only process 0 of a multi-process run writes files. A run still at chance level
    after an epoch is reported through ``warn`` (default: stderr), with the likely cause.
    ``announce``, if given, gets one line saying what trains where, once the run directory is
    locked and checked. ``model`` (``models.from_layers``) trains a network defined in code in
    place of ``config.model``, which then records its name; its checkpoint holds the weights,
    and ``load_checkpoint(..., model=...)`` reads it. Returns (params, history: list of
    per-epoch dicts)."""
    if model is not None:
        config = dataclasses.replace(config, model=model.spec or IN_CODE + model.name)
    mesh = make_mesh(device, devices)
    if jax.process_index() == 0 and out_dir is not None:
        run = runs.open_run(out_dir, resume=resume, describe=lambda out: _taken(out, config))
    else:
        run = contextlib.nullcontext()
    with run as out:
        return _fit(config, dataset, out, out_dir, resume, mesh, log, warn or _stderr, announce,
                    progress, model)


def _fit(config, dataset, out, out_dir, resume, mesh, log, warn, announce, progress, model):
    """``fit`` in the locked run directory ``out`` (None on processes that write nothing)."""
    (train_x, train_y), (test_x, test_y) = dataset
    if config.limit is not None:
        train_x, train_y = train_x[:config.limit], train_y[:config.limit]
    platform = mesh.devices.flat[0].platform
    if config.batch_size % mesh.size:
        raise ValueError(f"batch size {config.batch_size} does not divide evenly over "
                         f"{mesh.size} devices; choose a multiple of {mesh.size} or --devices")
    steps_per_epoch = steps_in_an_epoch(config, len(train_x))
    start, history = 0, []
    if resume:
        saved, model, params, opt_state, key, start = load_checkpoint(out_dir, platform=platform,
                                                                      model=model)
        check_resumable(saved, config, out_dir)
        history = runs.load_history(out_dir, warn=warn if out is not None else None)
        if out is not None and not runs.metrics_match(out, history):
            runs.write_metrics(out, history)  # as load_history's warning says
        opt = optimizer(config, steps_per_epoch)
        if start >= config.epochs:
            log(f"the run in {out_dir} is already complete ({start} of {config.epochs} epochs); "
                "nothing to train")
            return params, history
    else:
        model, opt, params, opt_state, key = initial_state(config, steps_per_epoch,
                                                            platform=platform, model=model)
    data_shape = (1, *train_x.shape[1:])
    if model.input_shape != data_shape:
        raise ValueError(f"the network {config.network!r} takes images {model.input_shape}; "
                         f"the data's are {data_shape}")

    if announce is not None and jax.process_index() == 0:
        where = f", into {out}" if out is not None else ""
        flops = models.forward_flops(model)
        announce(f"jaxlenet: training {config.network} ({model.impl} implementation) on "
                 f"{mesh.size} {platform} device(s), {jax.process_count()} process(es){where} "
                 f"({json.dumps(config.to_dict())})\n"
                 f"jaxlenet: {flops / 1e6:.2f} MFLOPs per image forward; "
                 f"{'; '.join(model.placement)}")
    train_x, train_y, test_x, test_y = shard_examples((train_x, train_y, test_x, test_y), mesh)
    params, opt_state = replicate((params, opt_state), mesh)
    show = _progress_bar if progress and jax.process_index() == 0 else None
    train_epoch = make_train_epoch(model, opt, config.batch_size, progress=show, mesh=mesh,
                                   label_smoothing=config.label_smoothing)
    evaluate = make_evaluate(model, mesh=mesh)

    warned = False
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
                                   + _divergence_advice(config))
        test_loss, test_acc = to_host(evaluate(params, test_x, test_y))
        record = {"epoch": epoch, "loss": round(loss, 6),
                  "train_acc": round(float(to_host(train_acc)), 6),
                  "test_acc": round(float(test_acc), 6), "test_loss": round(float(test_loss), 6),
                  "seconds": round(seconds, 3)}
        history.append(record)
        log(f"epoch {epoch}  loss {loss:.4f}  train acc {record['train_acc']:.3f}  "
            f"test acc {record['test_acc']:.3f}  time {seconds:.1f} s")
        if at_chance(loss, record["train_acc"]) and not warned:
            warn(f"jaxlenet: warning: after epoch {epoch} the loss is {loss:.3f} and the train "
                 f"accuracy {record['train_acc']:.3f}: chance level, nothing learned yet. "
                 + chance_advice(config, epoch * steps_per_epoch))
            warned = True
        if out is not None:
            checkpoint.save(out / runs.CHECKPOINT,
                            to_host({"params": params, "opt_state": opt_state, "key": key}),
                            {"epoch": epoch, "config": config.to_dict(), "impl": model.impl,
                             "spec": model.spec, "history": history})
            runs.write_metrics(out, history)
    return to_host(params), history


def steps_in_an_epoch(config: Config, examples: int) -> int:
    """Optimiser steps of one epoch of ``config`` over ``examples`` training examples (already
    cut to ``config.limit``, or not): the last, partial batch counts."""
    return -(-min(examples, config.limit or examples) // config.batch_size)


def at_chance(loss: float, accuracy: float) -> bool:
    """Whether a mean loss and an accuracy over 10 classes are at chance level: the loss near
    ln 10, the accuracy near 0.1."""
    return loss > 0.9 * math.log(10) and accuracy < 0.2


def chance_advice(config: Config, steps: int | None = None) -> str:
    """The likely reason a run of ``config`` is stuck at chance level after ``steps`` optimiser
    steps, and what to change."""
    step = config.lr / (1 - config.momentum)  # the step size momentum converges to
    if config.momentum and step > 2:
        return (f"lr {config.lr:g} with momentum {config.momentum:g} moves like lr {step:g} "
                f"without it, far too large: lower --lr (the default is {Config.lr:g}), or use "
                "--momentum 0 "
                "for the tutorial's lr 0.5 (--recipe tutorial)")
    if step > 2 and config.network == "lenet":
        return f"lr {config.lr:g} is too large for this recipe: lower --lr"
    if config.network == "lenet5":
        return ("LeNet-5's sigmoids can take a few epochs to leave chance (the tutorial's run "
                "does); if it ends there, raise --lr or train for more --epochs")
    if steps is not None and steps < 200:
        return (f"{steps} optimiser step{'s' * (steps != 1)} may be too few to learn: train on "
                "more images (no --limit) or for more --epochs")
    return "try another --lr or --init"


def _divergence_advice(config: Config) -> str:
    if config.weight_decay >= 0.1:
        return (f"Weight decay {config.weight_decay:g} is far too large (typical values are 1e-4 "
                "to 1e-3): lower --weight-decay")
    return f"Try a smaller learning rate than {config.lr:g} (--lr)"


def check_resumable(saved: Config, config: Config, out_dir) -> None:
    """Raises ValueError, naming the settings, if ``config`` cannot continue the run recorded
    as ``saved`` in ``out_dir``: only ``epochs`` may differ, and only under a constant rate."""
    different = _differences(saved, config)
    if different:
        raise ValueError(f"--resume: the run in {out_dir} was trained with "
                         f"{', '.join(different)}; a resumed run keeps every setting but "
                         "--epochs (start a new run with another --out instead)")
    if saved.schedule != "constant" and saved.epochs != config.epochs:
        raise ValueError(f"--resume: the run in {out_dir} schedules its learning rate over "
                         f"{saved.epochs} epochs ({saved.schedule} schedule) and cannot be "
                         f"extended to {config.epochs}; start a new run instead")


def _differences(saved: Config, asked: Config) -> list[str]:
    """The settings but ``epochs`` in which ``asked`` differs from ``saved``, named."""
    return [f"{f.name} {getattr(saved, f.name)!r} (asked: {getattr(asked, f.name)!r})"
            for f in dataclasses.fields(Config)
            if f.name != "epochs" and getattr(saved, f.name) != getattr(asked, f.name)]


def _taken(out: pathlib.Path, config: Config) -> str:
    """Why ``fit`` refuses to start ``config`` in ``out``, which holds a run, and what to do."""
    try:
        saved, epoch = read_run(out)
    except checkpoint.CheckpointError as exc:
        return f"{out} holds a checkpoint that cannot be read ({exc}); choose another --out"
    different = _differences(saved, config)
    if different:
        return (f"{out} already holds another run, trained with {', '.join(different)}; choose "
                "another --out")
    if epoch >= saved.epochs:
        return (f"{out} already holds this run, complete ({epoch} of {saved.epochs} epochs); "
                "choose another --out to train again")
    return (f"{out} already holds this run, stopped after epoch {epoch} of {saved.epochs}; "
            "pass --resume to continue it")


def save_trained(out_dir, config: Config, params, *, source: str) -> pathlib.Path:
    """Writes ``params`` trained elsewhere (``source`` says where) as a complete run of
    ``config`` in ``out_dir`` (locked, refused if it holds a run): a checkpoint that
    ``load_checkpoint``, ``jaxlenet evaluate`` and ``predict`` take like any other."""
    with runs.open_run(out_dir, resume=False) as out:
        model = build_model(config)
        # Shapes, then the fresh run's optimiser state and shuffle key: nothing is initialised
        # (or compiled) only to be replaced.
        template = jax.eval_shape(model.init, jax.ShapeDtypeStruct((2,), jnp.uint32))
        arrays = {f"params{key}": value for key, value in checkpoint.flatten(params).items()}
        params = checkpoint.restore(arrays, "params", template, finite=True)
        opt_state = optimizer(config, 1).init(params)
        key = _run_keys(seed_key(config.seed))[1]
        checkpoint.save(out / runs.CHECKPOINT,
                        to_host({"params": params, "opt_state": opt_state, "key": key}),
                        {"epoch": config.epochs, "config": config.to_dict(),
                         "impl": "reference", "spec": model.spec, "history": [],
                         "source": source})
        return out


def _progress_bar(done, total):
    done, total = int(done), int(total)
    width = 30
    filled = width * done // total
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} batches", end="",
          file=sys.stderr, flush=True)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def predict(model: models.Model, params, images) -> np.ndarray:
    """Class probabilities (N, 10) for float images (N, 1, 28, 28) in [0, 1]."""
    probabilities = jax.jit(lambda params, x: jax.nn.softmax(model.apply(params, x), axis=-1),
                            compiler_options=model.compiler_options)
    return np.asarray(probabilities(params, jnp.asarray(images)))

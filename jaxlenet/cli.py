"""The ``jaxlenet`` command: argument parsing only; the work is in train, data, models and bench.

Usage errors and bad values exit with status 2 and one line on stderr; a diverged run exits 3;
an interrupted one 130, its last checkpoint intact."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import pathlib
import signal
import sys

EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


class UsageError(Exception):
    """A bad command line or value: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _int_at_least(minimum: int, what: str):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _finite_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _config_option(parser, defaults, flag, help="", **kwargs):
    """A flag for a ``Config`` field; unset flags stay None, so --resume can tell them apart."""
    field = flag[2:].replace("-", "_")
    parser.add_argument(flag, dest=field, default=None,
                        help=f"{help} (default: {getattr(defaults, field)})".strip(), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from jaxlenet.train import Config

    defaults = Config()
    parser = _Parser(prog="jaxlenet", description="LeNet on Fashion-MNIST, exact to MXNet, in JAX.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser(
        "train", help="train a LeNet on Fashion-MNIST",
        description="Train a LeNet on Fashion-MNIST. With --resume, the run continues with the "
                    "configuration its checkpoint recorded; flags given override it.")
    option = functools.partial(_config_option, train, defaults)
    option("--model", choices=("lenet", "lenet5"))
    option("--epochs", type=_positive_int)
    option("--batch-size", type=_positive_int)
    option("--lr", type=_finite_float, help="learning rate")
    option("--momentum", type=_finite_float)
    option("--nesterov", action="store_const", const=True, help="Nesterov momentum")
    option("--weight-decay", type=_finite_float, help="L2 penalty added to the gradient")
    option("--init", choices=("normal", "xavier", "uniform"),
           help="normal(0.01), MXNet's Xavier, or MXNet's default uniform(0.07)")
    option("--schedule", choices=("constant", "cosine"),
           help="learning rate: constant, or a half cosine down to 0 at the end")
    option("--seed", type=_non_negative_int)
    option("--impl", choices=("auto", "reference", "fast"),
           help="'fast' (jaxlenet.fast) or 'reference' (jaxlenet.layers); 'auto' is fast on the "
                "CPU, reference on a GPU")
    train.add_argument("--data-dir", help="directory with the four Fashion-MNIST IDX files")
    train.add_argument("--out", default="runs/lenet", help="run directory (default: runs/lenet)")
    train.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--devices", type=_positive_int,
                       help="devices sharing each batch (default: all of the platform's)")
    cluster = train.add_argument_group(
        "multi-host", "one command per host; each flag also reads $JAXLENET_COORDINATOR, "
        "$JAXLENET_NUM_PROCESSES, $JAXLENET_PROCESS_ID")
    cluster.add_argument("--coordinator", default=os.environ.get("JAXLENET_COORDINATOR"),
                         metavar="HOST:PORT", help="address of process 0")
    cluster.add_argument("--num-processes", type=_positive_int,
                         default=os.environ.get("JAXLENET_NUM_PROCESSES"))
    cluster.add_argument("--process-id", type=_non_negative_int,
                         default=os.environ.get("JAXLENET_PROCESS_ID"))
    train.add_argument("--limit", type=_positive_int, help="train on the first N examples only")
    train.add_argument("--no-plots", action="store_true", help="skip curves.png/predictions.png")

    evaluate = commands.add_parser("evaluate", help="test accuracy of a checkpoint")
    evaluate.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    evaluate.add_argument("--data-dir")
    evaluate.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    evaluate.add_argument("--impl", choices=("auto", "reference", "fast"),
                          help="implementation (default: the one the run recorded)")

    predict = commands.add_parser("predict", help="classify PNG/JPEG images")
    predict.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    predict.add_argument("--top", type=_positive_int, default=3)
    predict.add_argument("--invert", choices=("auto", "yes", "no"), default="auto",
                         help="Fashion-MNIST is light on dark; 'auto' inverts light backgrounds")
    predict.add_argument("images", nargs="+")

    summary = commands.add_parser("summary", help="layer-by-layer output shapes")
    summary.add_argument("--model", choices=("lenet", "lenet5"), default="lenet")
    summary.add_argument("--batch-size", type=_positive_int, default=1)

    export = commands.add_parser(
        "export", help="write a trained model for use without jaxlenet",
        description="Write a checkpoint's model as serialized StableHLO: its inference function "
                    "(float32 images (N, 1, 28, 28) in [0, 1] -> logits (N, 10)) for the CPU and "
                    "CUDA GPUs, any batch size, which jax.export.deserialize(...).call(images) "
                    "runs without jaxlenet.")
    export.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    export.add_argument("--out", required=True, help="file to write")

    bench = commands.add_parser("bench", help="time training and inference")
    bench.add_argument("--model", choices=("lenet", "lenet5", "all"), default="all")
    bench.add_argument("--epochs", type=_positive_int, default=2,
                       help="timed epochs per framework (after a warm-up)")
    bench.add_argument("--batch-size", type=_positive_int, default=256)
    bench.add_argument("--limit", type=_positive_int, help="examples per epoch (default: 60,000)")
    bench.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    bench.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    bench.add_argument("--impl", choices=("auto", "reference", "fast"), default="auto")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _start_cluster(args) -> None:
    """Joins a multi-process run (before any other JAX call) when a coordinator is named."""
    wanted = (args.coordinator, args.num_processes, args.process_id)
    if all(v is None for v in wanted):
        return
    if any(v is None for v in wanted):
        raise UsageError("--coordinator, --num-processes and --process-id go together")
    num_processes, process_id = int(args.num_processes), int(args.process_id)
    if not process_id < num_processes:
        raise UsageError(f"--process-id {process_id} must be below --num-processes "
                         f"{num_processes}")
    import jax
    # CPU processes need a collectives implementation to sum gradients across hosts.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, num_processes, process_id)


def _train(args) -> int:
    _start_cluster(args)
    import jax

    from jaxlenet import data, devices, models, plots, train

    out = pathlib.Path(args.out)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(train.Config)
             if getattr(args, f.name) is not None}
    if args.resume:
        config = dataclasses.replace(train.load_checkpoint(out)[0], **given)
    elif (out / train.CHECKPOINT).exists():
        raise UsageError(f"{out} already holds a run; pass --resume to continue it or choose "
                         "another --out")
    else:
        config = train.Config(**given)
    dataset = data.load_fashion_mnist(args.data_dir)
    writer = jax.process_index() == 0
    with train.run_lock(out) if writer else contextlib.nullcontext():
        mesh = devices.make_mesh(args.device, args.devices)
        platform = mesh.devices.flat[0].platform
        if writer:
            impl = models.choose_impl(config.impl, platform=platform)
            print(f"jaxlenet: training {config.model} ({impl} implementation) on {mesh.size} "
                  f"{platform} device(s), {jax.process_count()} process(es) "
                  f"({json.dumps(dataclasses.asdict(config))})", file=sys.stderr)
        params, history = train.fit(config, dataset, out_dir=out, resume=args.resume,
                                    device=args.device, devices=args.devices, limit=args.limit,
                                    progress=sys.stderr.isatty(),
                                    log=print if writer else lambda _: None)
        if writer and not args.no_plots and history:
            plots.plot_curves(history, out / "curves.png")
            (_, _), (test_x, test_y) = dataset
            model = models.build(config.model, impl=config.impl, platform=platform)
            probs = train.predict(model, params, data.to_float_nchw(test_x[:32]))
            plots.plot_predictions(test_x[:32], test_y[:32], probs.argmax(-1), data.CLASS_NAMES,
                                   out / "predictions.png")
    if writer:
        print(f"jaxlenet: wrote {out}/checkpoint.npz, metrics.jsonl"
              + ("" if args.no_plots else ", curves.png, predictions.png"), file=sys.stderr)
    return 0


def _evaluate(args) -> int:
    import jax

    from jaxlenet import data, devices, train

    device = devices.select_device(args.device)
    config, model, params, _, _, epoch = train.load_checkpoint(args.checkpoint, impl=args.impl,
                                                               platform=device.platform)
    _, (test_x, test_y) = data.load_fashion_mnist(args.data_dir)
    loss, acc = train.make_evaluate(model)(jax.device_put(params, device),
                                           jax.device_put(test_x, device),
                                           jax.device_put(test_y, device))
    print(f"{config.model} after epoch {epoch}: test loss {float(loss):.4f}  "
          f"test acc {float(acc):.4f}  ({len(test_y)} images, {model.impl} implementation)")
    return 0


def _predict(args) -> int:
    from jaxlenet import data, images, train

    _, model, params, _, _, _ = train.load_checkpoint(args.checkpoint)
    batch = images.load_images(args.images, invert=args.invert)
    probs = train.predict(model, params, batch)
    top = min(args.top, probs.shape[1])
    for path, p in zip(args.images, probs):
        best = p.argsort()[::-1][:top]
        ranked = ", ".join(f"{data.CLASS_NAMES[i]} {p[i]:.3f}" for i in best)
        print(f"{path}: {ranked}")
    return 0


def _summary(args) -> int:
    from jaxlenet import models

    print(models.format_summary(models.build(args.model), args.batch_size))
    return 0


def _export(args) -> int:
    from jaxlenet import export, train
    from jaxlenet._files import atomic_write

    config, _, params, _, _, epoch = train.load_checkpoint(args.checkpoint)
    out = pathlib.Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; name the file to write")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: no directory {out.parent}")
    try:
        atomic_write(out, export.stablehlo_bytes(config.model, params))
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    print(f"jaxlenet: wrote {out}: {config.model} after epoch {epoch} as StableHLO for "
          f"{' and '.join(export.PLATFORMS)}", file=sys.stderr)
    return 0


def _bench(args) -> int:
    from jaxlenet import bench

    report = bench.run(models=("lenet", "lenet5") if args.model == "all" else (args.model,),
                       epochs=args.epochs, batch_size=args.batch_size, limit=args.limit,
                       torch=not args.no_torch, device=args.device, impl=args.impl,
                       log=None if args.json else print)
    if args.json:
        print(json.dumps(report, indent=1))
    return 0


COMMANDS = {"train": _train, "evaluate": _evaluate, "predict": _predict, "summary": _summary,
            "export": _export, "bench": _bench}


def _terminate(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv=None) -> int:
    from jaxlenet.checkpoint import CheckpointError
    from jaxlenet.data import DataError
    from jaxlenet.train import RunLocked, TrainingDiverged

    with contextlib.suppress(ValueError):  # not in the main thread: leave SIGTERM alone
        signal.signal(signal.SIGTERM, _terminate)
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except (UsageError, ValueError, TypeError, DataError, CheckpointError, RunLocked,
            FileNotFoundError) as exc:
        print(f"jaxlenet: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingDiverged as exc:
        print(f"jaxlenet: diverged: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        print("\njaxlenet: interrupted; the last completed epoch's checkpoint is intact "
              "(continue with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

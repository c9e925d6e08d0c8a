"""The ``jaxlenet`` command: argument parsing only; the work is in train, data, models and bench.

Usage errors, bad values and files that cannot be used exit with status 2 and one line on stderr;
a diverged run exits 3; a run that ends at chance level 4; an interrupted one 130, its last
checkpoint intact."""

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
import threading

EXIT_USAGE, EXIT_DIVERGED, EXIT_AT_CHANCE, EXIT_INTERRUPTED = 2, 3, 4, 130
EXIT_PIPE_CLOSED = 141  # as a Unix tool SIGPIPE ends: 128 + 13


class UsageError(Exception):
    """A bad command line or value: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, with what was kept: reported in one line, exit status 130."""


def _int_between(minimum: int, maximum: int, what: str):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


_positive_int = _int_between(1, 2 ** 31 - 1, "a positive integer below 2**31")
_non_negative_int = _int_between(0, 2 ** 31 - 1, "an integer from 0 to 2**31 - 1")
_epochs = _int_between(1, 100_000, "a number of epochs from 1 to 100,000")
_seed = _int_between(0, 2 ** 63 - 1, "an integer from 0 to 2**63 - 1")


def _batch_size(text):
    from jaxlenet.train import MAX_BATCH_SIZE
    return _int_between(1, MAX_BATCH_SIZE, f"a batch size from 1 to {MAX_BATCH_SIZE:,} "
                        "(the training set)")(text)


def _network(text):
    """``--model``: a built-in network's name, or a JSON spec file (its validated spec)."""
    from jaxlenet import specs

    if text in specs.BUILTIN:
        return text
    if text.endswith(".json") or os.sep in text or os.path.exists(text):
        try:
            return specs.load(text)
        except specs.SpecError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from "
                                     f"{', '.join(specs.BUILTIN)}, or a spec FILE.json)")


def _network_name(model) -> str:
    return model["name"] if isinstance(model, dict) else model


def _coordinator(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 10.0.0.1:1234), got {text!r}")
    return text


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
    from jaxlenet import __version__

    parser = _Parser(prog="jaxlenet", description="LeNet on Fashion-MNIST, exact to MXNet, in JAX.")
    parser.add_argument("--version", action="version", version=f"jaxlenet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                     metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train a LeNet on Fashion-MNIST",
        description="Train a LeNet on Fashion-MNIST. --recipe starts from a named configuration, "
                    "which the other flags amend. With --resume, the run continues with the "
                    "configuration its checkpoint recorded: flags given must match it, except "
                    "--epochs, which may extend a constant-rate run.")
    train.add_argument("--recipe", choices=("default", "tutorial", "tutorial-lenet5"),
                       help="'tutorial': the tutorial's LeNet (uniform init, SGD lr 0.5 without "
                            "momentum, batch 256, 10 epochs); 'tutorial-lenet5': its LeNet-5 "
                            "(Xavier, lr 0.9, batch 256, 5 epochs); 'default': jaxlenet's "
                            "defaults below")
    option = functools.partial(_config_option, train, defaults)
    option("--model", type=_network, metavar="lenet|lenet5|mlp|FILE.json",
           help="a built-in network, or a spec file (jaxlenet summary --model NAME --spec "
                "prints one to edit)")
    option("--epochs", type=_epochs)
    option("--batch-size", type=_batch_size)
    option("--lr", type=_finite_float, help="learning rate")
    option("--momentum", type=_finite_float)
    option("--nesterov", action=argparse.BooleanOptionalAction, help="Nesterov momentum")
    option("--weight-decay", type=_finite_float, help="L2 penalty added to the gradient")
    option("--init", choices=("normal", "xavier", "uniform"),
           help="normal(0.01), MXNet's Xavier, or MXNet's default uniform(0.07)")
    option("--schedule", choices=("constant", "cosine", "onecycle"),
           help="learning rate: constant; a half cosine down to 0 at the end; or one cycle (up "
                "from lr/25 over the first 30%% of the steps, then a cosine down)")
    option("--label-smoothing", type=_finite_float,
           help="train against (1 - e) one-hot + e uniform labels")
    option("--seed", type=_seed)
    option("--impl", choices=("auto", "reference", "fast"),
           help="'fast' (jaxlenet.fast) or 'reference' (jaxlenet.layers); 'auto' is fast on the "
                "CPU, reference on a GPU")
    train.add_argument("--data-dir", help="directory with the four Fashion-MNIST IDX files")
    train.add_argument("--out", help="run directory (default: runs/NAME, the network's name, or "
                                     "runs/NAME-2, -3, ... if that holds a run)")
    train.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--devices", type=_positive_int,
                       help="devices sharing each batch (default: all of the platform's)")
    cluster = train.add_argument_group(
        "multi-host", "one command per host; each flag also reads $JAXLENET_COORDINATOR, "
        "$JAXLENET_NUM_PROCESSES, $JAXLENET_PROCESS_ID")
    cluster.add_argument("--coordinator", default=os.environ.get("JAXLENET_COORDINATOR"),
                         type=_coordinator, metavar="HOST:PORT", help="address of process 0")
    cluster.add_argument("--coordinator-timeout", type=_positive_int, default=60,
                         metavar="SECONDS",
                         help="how long to wait for every process to join (default: 60)")
    cluster.add_argument("--num-processes", type=_positive_int,
                         default=os.environ.get("JAXLENET_NUM_PROCESSES"))
    cluster.add_argument("--process-id", type=_non_negative_int,
                         default=os.environ.get("JAXLENET_PROCESS_ID"))
    option("--limit", type=_positive_int, help="train on the first N examples only")
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

    summary = commands.add_parser(
        "summary", help="layer-by-layer output shapes, parameters and FLOPs",
        description="A network's layers with their output shapes, parameters and forward FLOPs "
                    "per image (a multiply-add counts 2); with --spec, its spec as JSON, to save "
                    "and edit (then: jaxlenet train --model FILE.json).")
    summary.add_argument("--model", type=_network, metavar="lenet|lenet5|mlp|FILE.json",
                         help="the network (default: lenet)")
    summary.add_argument("--checkpoint", metavar="DIR",
                         help="the network a run trained, from its checkpoint alone")
    summary.add_argument("--batch-size", type=_positive_int, default=1)
    summary.add_argument("--spec", action="store_true", help="print the network's spec as JSON")

    export = commands.add_parser(
        "export", help="write a trained model for use without jaxlenet",
        description="Write a checkpoint's model. 'stablehlo' (default): its inference function "
                    "(float32 images (N, 1, 28, 28) in [0, 1] -> logits (N, 10)) as serialized "
                    "StableHLO for the CPU and CUDA GPUs, any batch size, which "
                    "jax.export.deserialize(...).call(images) runs without jaxlenet. 'mxnet': "
                    "its parameters as a .params file that the tutorial's Gluon network loads "
                    "(net.load_parameters).")
    export.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    export.add_argument("--out", required=True, help="file to write")
    export.add_argument("--format", choices=("stablehlo", "mxnet"), default="stablehlo")

    importer = commands.add_parser(
        "import-mxnet", help="a LeNet trained by MXNet, as a jaxlenet run",
        description="Read parameters MXNet saved (Gluon's net.save_parameters, or nd.save of a "
                    "dict with prefixed names) for the tutorial's LeNet or LeNet-5, without "
                    "MXNet, into a run directory that evaluate, predict and export take.")
    importer.add_argument("params", metavar="FILE.params")
    importer.add_argument("--model", type=_network, required=True,
                          metavar="lenet|lenet5|mlp|FILE.json")
    importer.add_argument("--out", required=True, help="run directory to write")

    bench = commands.add_parser("bench", help="time training and inference")
    bench.add_argument("--model", type=lambda text: text if text == "all" else _network(text),
                       default="all", metavar="lenet|lenet5|mlp|FILE.json|all",
                       help="'all': lenet and lenet5")
    bench.add_argument("--epochs", type=_epochs, default=2,
                       help="timed epochs per framework (after a warm-up)")
    bench.add_argument("--batch-size", type=_batch_size, default=256)
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
    timeout = args.coordinator_timeout
    what = f"the run at {args.coordinator} as process {process_id} of {num_processes}"
    print(f"jaxlenet: process {process_id} of {num_processes}: waiting up to {timeout} s for the "
          f"coordinator at {args.coordinator} and the other processes", file=sys.stderr,
          flush=True)
    joined = threading.Event()

    def give_up():
        # XLA aborts the process with a C++ stack trace when its own deadline passes: this
        # reports the failure in one line before it does.
        if not joined.wait(timeout):
            print(f"jaxlenet: error: could not join {what} within {timeout} s: is every "
                  "process started, and the coordinator's address right?", file=sys.stderr,
                  flush=True)
            os._exit(EXIT_USAGE)

    threading.Thread(target=give_up, daemon=True).start()
    try:
        jax.distributed.initialize(args.coordinator, num_processes, process_id,
                                   initialization_timeout=timeout + 60)
    except Exception as exc:  # the coordination service's errors have no public type
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"could not join {what}: {reason}") from None
    finally:
        joined.set()


def _default_out(model: str) -> pathlib.Path:
    """runs/NAME, or the first of runs/NAME-2, -3, ... that holds no run."""
    from jaxlenet import runs

    base = pathlib.Path("runs") / model
    out, number = base, 1
    while out.exists() and (not out.is_dir() or (out / runs.CHECKPOINT).exists()):
        number += 1
        out = base.with_name(f"{model}-{number}")
    return out


def _train(args) -> int:
    from jaxlenet import train

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(train.Config)
             if getattr(args, f.name) is not None}
    if args.resume:
        if args.recipe is not None:
            raise UsageError("--recipe starts a new run; --resume continues one with the "
                             "configuration it recorded")
        out = pathlib.Path(args.out if args.out is not None else
                           pathlib.Path("runs") / _network_name(args.model or train.Config.model))
        saved, done = train.read_run(out)
        config = dataclasses.replace(saved, **given)
    else:
        if args.out == "":
            raise UsageError("--out is empty: name a directory")
        config = train.Config(**{**train.RECIPES[args.recipe or "default"], **given})
        out = pathlib.Path(args.out) if args.out is not None else _default_out(config.network)
        done = 0
    _start_cluster(args)
    import jax

    from jaxlenet import data, devices, plots

    dataset = data.load_fashion_mnist(args.data_dir, warn=_warn)
    writer = jax.process_index() == 0
    # matplotlib's import (~0.4 s) runs while the second epoch trains: XLA holds no lock that
    # Python needs then, and the plots at the end find it done.
    importer = threading.Thread(target=plots.pyplot, daemon=True)

    def log(line: str) -> None:
        print(line)
        if not args.no_plots and importer.ident is None:
            importer.start()

    try:
        params, history = train.fit(config, dataset, out_dir=out, resume=args.resume,
                                    device=args.device, devices=args.devices,
                                    progress=sys.stderr.isatty(),
                                    log=log if writer else lambda _: None, warn=_warn,
                                    announce=_warn)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; {_what_is_saved(out)}") from None
    except BrokenPipeError:
        raise
    except OSError as exc:  # a full disk, say: the file, then what the run kept
        raise UsageError(f"{_os_error(exc)}; {_what_is_saved(out)}") from None
    if not writer:
        return 0
    if history and history[-1]["epoch"] > done and not args.no_plots:
        (_, _), (test_x, test_y) = dataset
        model = train.build_model(config, devices.select_device(args.device).platform)
        probs = train.predict(model, params, data.to_float_nchw(test_x[:32]))
        try:
            plots.plot_curves(history, out / "curves.png")
            plots.plot_predictions(test_x[:32], test_y[:32], probs.argmax(-1),
                                   data.CLASS_NAMES, out / "predictions.png")
        except OSError as exc:
            raise UsageError(f"{_os_error(exc)}; {_what_is_saved(out)}") from None
    from jaxlenet import runs
    written = [name for name in (runs.CHECKPOINT, runs.METRICS, *runs.PLOTS)
               if (out / name).is_file()]
    print(f"jaxlenet: {out} holds {', '.join(written)}", file=sys.stderr)
    if history and train.at_chance(history[-1]["test_loss"], history[-1]["test_acc"]):
        steps = train.steps_in_an_epoch(config, len(dataset[0][0]))
        print(f"jaxlenet: failed: the run ended at chance level (test accuracy "
              f"{history[-1]['test_acc']:.3f}): it learned nothing. "
              f"{train.chance_advice(config, config.epochs * steps)}",
              file=sys.stderr)
        return EXIT_AT_CHANCE
    return 0


def _what_is_saved(out: pathlib.Path) -> str:
    """What a run that stopped in ``out`` left safe on disk, said to the user."""
    from jaxlenet import checkpoint, train

    try:
        config, epoch = train.read_run(out)
    except checkpoint.CheckpointError:
        return "nothing was saved (no epoch had ended)"
    if epoch >= config.epochs:
        return f"the checkpoint of the complete run ({epoch} epochs) in {out} is intact"
    return (f"the checkpoint of epoch {epoch} in {out} is intact (continue with --resume "
            f"--out {out})")


def _os_error(exc: OSError) -> str:
    """An OSError as one line naming its file: "cannot write F: No space left on device"."""
    if exc.filename is None:
        return str(exc)
    return f"cannot write {exc.filename}: {exc.strerror or exc}"


def _warn(line: str) -> None:
    print(line, file=sys.stderr)


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
    print(f"{config.network} after epoch {epoch}: test loss {float(loss):.4f}  "
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
    from jaxlenet import models, specs, train

    if args.checkpoint is not None and args.model is not None:
        raise UsageError("--model and --checkpoint name a network each: give one")
    network = (train.read_network(args.checkpoint) if args.checkpoint is not None
               else args.model or "lenet")
    if args.spec:
        print(specs.dumps(specs.resolve(network)))
    else:
        print(models.format_summary(models.build(network), args.batch_size))
    return 0


def _export(args) -> int:
    from jaxlenet import checkpoint, export, mxnet_params, runs, train
    from jaxlenet._files import atomic_write

    config, model, params, _, _, epoch = train.load_checkpoint(args.checkpoint)
    out = pathlib.Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; name the file to write")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: no directory {out.parent}")
    if out.is_file() and checkpoint.looks_like_one(out):
        source = pathlib.Path(args.checkpoint)
        source = source / runs.CHECKPOINT if source.is_dir() else source
        which = "the checkpoint being exported" if out.samefile(source) else "a checkpoint"
        raise UsageError(f"--out {out} is {which}; jaxlenet never writes over a run's "
                         "checkpoint: name another file")
    if args.format == "mxnet":
        raw, what = mxnet_params.dumps(mxnet_params.from_params(params, model)), "MXNet .params"
    else:
        raw = export.stablehlo_bytes(model.spec, params)
        what = f"StableHLO for {' and '.join(export.PLATFORMS)}"
    try:
        atomic_write(out, raw)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    print(f"jaxlenet: wrote {out}: {config.network} after epoch {epoch} as {what}",
          file=sys.stderr)
    return 0


def _import_mxnet(args) -> int:
    from jaxlenet import models, mxnet_params, train

    config = train.Config(**{**train.RECIPES["default"], "model": args.model, "epochs": 1})
    model = models.build(args.model, impl="reference")
    mxnet_params.check_gluon(model)
    params = mxnet_params.to_params(
        mxnet_params.read(args.params, mxnet_params.size_bound(model)), model, args.params)
    out = train.save_trained(args.out, config, params, source=f"MXNet {args.params}")
    print(f"jaxlenet: wrote {out}/checkpoint.npz: {config.network} from {args.params}",
          file=sys.stderr)
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
            "export": _export, "import-mxnet": _import_mxnet, "bench": _bench}


def _terminate(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv=None) -> int:
    from jaxlenet.checkpoint import CheckpointError
    from jaxlenet.data import DataError
    from jaxlenet.mxnet_params import ParamsError
    from jaxlenet.runs import RunLocked
    from jaxlenet.train import TrainingDiverged

    with contextlib.suppress(ValueError):  # not in the main thread: leave SIGTERM alone
        signal.signal(signal.SIGTERM, _terminate)
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:
        parser.print_help()
        return EXIT_USAGE
    try:
        args = parser.parse_args(argv)
        if getattr(args, "coordinator", None) is None:  # else JAX starts after joining the run
            from jaxlenet import devices
            devices.check_platforms()
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, where a reader that went away is caught
        return code
    except BrokenPipeError:  # `jaxlenet ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE_CLOSED
    except (UsageError, ValueError, TypeError, DataError, CheckpointError, ParamsError,
            RunLocked, OSError) as exc:
        print(f"jaxlenet: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingDiverged as exc:
        print(f"jaxlenet: diverged: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except Interrupted as exc:
        print(f"\njaxlenet: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("\njaxlenet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if type(exc).__name__ not in ("JaxRuntimeError", "XlaRuntimeError"):
            raise
        print(f"jaxlenet: error: {_runtime_error(exc)}", file=sys.stderr)
        return EXIT_USAGE


def _runtime_error(exc: Exception) -> str:
    """One line for an error XLA raised while running a program."""
    text = str(exc).strip()
    if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
        return ("out of memory running the compiled program; use a smaller --batch-size "
                f"({text.splitlines()[0][:200]})")
    return text.splitlines()[0][:300] if text else type(exc).__name__


def entry() -> None:
    """The console command: ``main``, then the process ends at once (its files are consistent:
    every write is atomic), not through the interpreter's teardown, which is slow and, after an
    interrupt, can crash while XLA still runs the interrupted epoch; a process of a multi-process
    run ends normally, leaving the run through jax.distributed's shutdown.

    Compiled programs are kept in the user cache (``$XDG_CACHE_HOME/jaxlenet/xla``), so a
    command compiles what an earlier one compiled only once; ``bench`` measures compilation and
    does not use it, nor does anything with ``JAXLENET_COMPILE_CACHE=0``."""
    if sys.argv[1:2] != ["bench"] and os.environ.get("JAXLENET_COMPILE_CACHE", "1") != "0":
        from jaxlenet._files import user_cache

        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(user_cache() / "xla"))
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    _open_closed_standard_streams()
    code = main()
    if code == EXIT_INTERRUPTED or not _in_a_cluster():
        # The interpreter's teardown (XLA's client, its threads and buffers) took 0.3-0.4 s of
        # every command here; every file is written and closed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)  # jax.distributed's shutdown tells the other processes


def _open_closed_standard_streams() -> None:
    """Opens /dev/null on a standard stream the caller closed (``jaxlenet ... >&-``): what would
    go there is discarded, the exit status still tells, and no file the command opens can take
    descriptor 1 or 2 and receive its output."""
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # takes the lowest free descriptor: this one
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))


def _in_a_cluster() -> bool:
    """Whether this process joined a multi-process run (``--coordinator``)."""
    return "jax" in sys.modules and sys.modules["jax"].distributed.is_initialized()


if __name__ == "__main__":
    entry()

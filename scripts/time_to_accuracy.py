"""Time to accuracy of ``jaxlenet train``, measured as a user meets it: the command run as a fresh
process per seed (import, data, compile, every epoch and its evaluation, the plots), timed from
its start to its last line, and, in the same run, PyTorch 2.13's epoch of the tutorial's LeNet at
batch 256 (before and after the seeds), so that the command's time reads in PyTorch epochs on
this machine. Prints, per seed, when the test accuracy first reached the target, when the command
ended and its final accuracy (from metrics.jsonl, unrounded); then min / mean / max and a
Markdown table. One process at a time: never time two runs at once on this machine.

    python scripts/time_to_accuracy.py                     # the defaults, seeds 0 to 4
    python scripts/time_to_accuracy.py -- --batch-size 128 --epochs 6   # a candidate recipe
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time


def run(seed: int, extra: list[str], target: float) -> dict:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "jaxlenet", "train", "--seed", str(seed), "--out",
                   f"{out}/run", *extra]
        began = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        reached, epochs, lines = None, [], []
        for line in process.stdout:
            now = time.perf_counter() - began
            lines.append(line.rstrip())
            match = re.match(r"epoch (\d+) .*test acc ([\d.]+)", line)
            if match:
                epochs.append((int(match.group(1)), float(match.group(2)), now))
        process.wait()
        ended = time.perf_counter() - began
        if process.returncode != 0:
            raise SystemExit(f"seed {seed}: exit {process.returncode}\n" + "\n".join(lines[-5:]))
        with open(f"{out}/run/metrics.jsonl") as f:
            accuracies = [json.loads(line)["test_acc"] for line in f]
    for (_, _, now), accuracy in zip(epochs, accuracies):
        if reached is None and accuracy >= target:
            reached = now
    return {"seed": seed, "reached": reached, "ended": ended, "final": accuracies[-1],
            "epochs": [(e, a, t) for (e, _, t), a in zip(epochs, accuracies)]}


def torch_epochs() -> list[float]:
    """PyTorch's epochs of the tutorial's LeNet at batch 256, or [] without PyTorch."""
    try:
        from jaxlenet import bench
        return bench.torch_epochs("lenet", epochs=2, batch_size=256)
    except ImportError:
        return []


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--target", type=float, default=0.91)
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch's yardstick")
    parser.add_argument("extra", nargs="*", help="flags for jaxlenet train (after --)")
    args = parser.parse_args()
    torch_times = [] if args.no_torch else torch_epochs()
    results = []
    for seed in args.seeds:
        result = run(seed, args.extra, args.target)
        results.append(result)
        first = f"{result['reached']:.1f} s" if result["reached"] is not None else "never"
        print(f"seed {seed}: test acc {args.target} first at {first}; ended at "
              f"{result['ended']:.1f} s with {result['final']:.4f}  "
              + " ".join(f"{e}:{a:.4f}@{t:.1f}" for e, a, t in result["epochs"]), flush=True)
    torch_times += [] if args.no_torch else torch_epochs()
    torch_epoch = statistics.median(torch_times) if torch_times else None
    flags = " ".join(args.extra) or "(defaults)"
    in_torch = lambda s: f" ({s / torch_epoch:.2f} PyTorch epochs)" if torch_epoch else ""
    print(f"\n| seed | flags | {args.target} first reached (s) | command ended (s) | "
          "final test acc |")
    print("|---|---|---|---|---|")
    for r in results:
        first = f"{r['reached']:.1f}" if r["reached"] is not None else "never"
        print(f"| {r['seed']} | `{flags}` | {first} | {r['ended']:.1f}{in_torch(r['ended'])} | "
              f"{r['final']:.4f} |")
    finals = [r["final"] for r in results]
    ends = [r["ended"] for r in results]
    print(f"\nfinal test acc: min {min(finals):.4f}, mean {statistics.mean(finals):.4f}, "
          f"max {max(finals):.4f}")
    print(f"command ended: min {min(ends):.1f} s, mean {statistics.mean(ends):.1f} s, max "
          f"{max(ends):.1f} s{in_torch(max(ends))}")
    if torch_epoch:
        print(f"PyTorch {_torch_version()} epoch, the tutorial's LeNet at batch 256: "
              f"{torch_epoch:.2f} s (median of {', '.join(f'{t:.2f}' for t in torch_times)})")
    elif not args.no_torch:
        print("PyTorch is not installed: no yardstick (pip install torch==2.13.0)")


def _torch_version() -> str:
    import torch
    return torch.__version__


if __name__ == "__main__":
    main()

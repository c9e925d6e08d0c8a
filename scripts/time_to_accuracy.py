"""Time to accuracy of ``jaxlenet train``, measured as a user meets it: the command run as a fresh
process per seed (import, data, compile, every epoch and its evaluation, the plots), timed from
its start to its last line. Prints, per seed, when the test accuracy first reached the target
and when the command ended, then a Markdown table (the README's). Runs one process at a time:
never time two runs at once on this machine.

    python scripts/time_to_accuracy.py                     # the defaults, seeds 0 1 2
    python scripts/time_to_accuracy.py -- --batch-size 128 --epochs 6   # a candidate recipe
"""

import argparse
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
        reached, accuracies, lines = None, [], []
        for line in process.stdout:
            now = time.perf_counter() - began
            lines.append(line.rstrip())
            match = re.match(r"epoch (\d+) .*test acc ([\d.]+)", line)
            if match:
                accuracy = float(match.group(2))
                accuracies.append((int(match.group(1)), accuracy, now))
                if reached is None and accuracy >= target:
                    reached = now
        process.wait()
        ended = time.perf_counter() - began
    if process.returncode != 0:
        raise SystemExit(f"seed {seed}: exit {process.returncode}\n" + "\n".join(lines[-5:]))
    return {"seed": seed, "reached": reached, "ended": ended, "final": accuracies[-1][1],
            "epochs": accuracies}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=0.91)
    parser.add_argument("extra", nargs="*", help="flags for jaxlenet train (after --)")
    args = parser.parse_args()
    results = []
    for seed in args.seeds:
        result = run(seed, args.extra, args.target)
        results.append(result)
        first = f"{result['reached']:.1f} s" if result["reached"] is not None else "never"
        print(f"seed {seed}: test acc {args.target} first at {first}; ended at "
              f"{result['ended']:.1f} s with {result['final']:.4f}  "
              + " ".join(f"{e}:{a:.3f}@{t:.1f}" for e, a, t in result["epochs"]), flush=True)
    flags = " ".join(args.extra) or "(defaults)"
    print(f"\n| seed | flags | {args.target} first reached (s) | command ended (s) | "
          "final test acc |")
    print("|---|---|---|---|---|")
    for r in results:
        first = f"{r['reached']:.1f}" if r["reached"] is not None else "never"
        print(f"| {r['seed']} | `{flags}` | {first} | {r['ended']:.1f} | {r['final']:.4f} |")
    finals = [r["final"] for r in results]
    print(f"\nmean final test acc {statistics.mean(finals):.4f}, min {min(finals):.4f}; slowest "
          f"end {max(r['ended'] for r in results):.1f} s")


if __name__ == "__main__":
    main()

"""The accuracy quality gate, on the real Fashion-MNIST (minutes, not a test):

- the tutorial's recipe: lenet, MXNet's default uniform(0.07) init, SGD lr 0.5, batch 256,
  10 epochs: test accuracy >= 0.88 (MXNet 1.9.1 reached 0.883 here; the tutorial printed 0.887);
- lenet5, sigmoid, Xavier, SGD lr 0.9, batch 256, 5 epochs: >= 0.73 (MXNet 0.735; tutorial 0.763);
- jaxlenet's default flags (`jaxlenet train`: lenet, 6 epochs): >= 0.91.

Prints a Markdown table (the README's) and exits 1 if a run misses its bar."""

import argparse
import statistics
import sys

import jax

from jaxlenet import data, devices, train

RUNS = [
    ("tutorial lenet", 0.88, train.Config(**train.RECIPES["tutorial"]), "--recipe tutorial"),
    ("tutorial lenet5", 0.73, train.Config(**train.RECIPES["tutorial-lenet5"]),
     "--recipe tutorial-lenet5"),
    ("jaxlenet defaults", 0.91, train.Config(), ""),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=[name for name, *_ in RUNS], action="append")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    dataset = data.load_fashion_mnist(args.data_dir)
    device = devices.select_device("auto")
    rows, failed = [], False
    for name, bar, config, flags in RUNS:
        if args.only and name not in args.only:
            continue
        print(f"== {name}: {config}", flush=True)
        _, history = train.fit(config, dataset, log=lambda line: print(line, flush=True))
        final = history[-1]["test_acc"]
        seconds = statistics.median(m["seconds"] for m in history[1:] or history)
        failed |= final < bar
        rows.append(f"| {name} | `{('jaxlenet train ' + flags).strip()}` | {config.epochs} | "
                    f"{seconds:.1f} | "
                    f"{final:.4f} | {bar} | {'pass' if final >= bar else 'FAIL'} |")
    print(f"\ndevice: {device.platform} ({device.device_kind}), jax {jax.__version__}\n")
    print("| run | flags | epochs | s/epoch | test acc | bar | |\n|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

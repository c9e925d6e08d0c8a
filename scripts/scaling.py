"""Data-parallel scaling: steady-state training images/s of `lenet` (batch 256) on 1, 2 and 4
devices. On a CPU machine the devices are simulated
(XLA_FLAGS=--xla_force_host_platform_device_count=4) and share its cores, so this measures the
overhead of sharding rather than a speed-up; on a multi-GPU machine it measures scaling."""

import argparse
import os
import statistics

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402

from jaxlenet import data, devices, train  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=15360, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs per setting (the first is a warm-up)")
    args = parser.parse_args()
    dataset = data.load_fashion_mnist()
    available = len(jax.devices(devices.select_device("auto").platform))
    print("| devices | images/s | s/epoch |\n|---|---|---|")
    for count in (1, 2, 4):
        if count > available:
            break
        config = train.Config(epochs=args.epochs, batch_size=256, schedule="constant",
                              limit=args.limit)
        _, history = train.fit(config, dataset, devices=count, log=lambda _: None)
        seconds = statistics.median(m["seconds"] for m in history[1:])
        print(f"| {count} | {args.limit / seconds:,.0f} | {seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()

"""The exercises at the end of the tutorial's LeNet section, as variants of its LeNet recipe
(MXNet's uniform init, SGD at lr 0.5 without momentum, batch 256, 10 epochs):

1. change the convolutions: filters 6/16, 20/50 (the tutorial's), 40/100; kernels 3, 5, 7;
2. pool by average instead of maximum;
3. run on the CPU and on a GPU (the reference implementation on both, so that the same program
   is compared; skipped, and said, on a machine without a GPU);
4. count the floating-point operations of the CNN against the previous chapter's MLP.

Prints one table: variant, parameters, MFLOPs per image (forward; a multiply-add counts 2),
seconds per epoch (the median epoch, compilation excluded), test accuracy after the epochs.
Each variant is a spec (``jaxlenet.specs``): ``--save-specs DIR`` writes them, for
``jaxlenet train --model DIR/NAME.json``.

    python scripts/exercises.py                 # the full run (about 15 minutes on 2 cores)
    python scripts/exercises.py --limit 512 --epochs 1 --only filters-6-16 mlp
"""

import argparse
import copy
import json
import pathlib
import statistics

import jax

from jaxlenet import data, models, specs, train


def variant(name: str, *, filters=None, kernel=None, pool=None) -> dict:
    """The tutorial's LeNet with its two convolutions' ``filters`` and/or ``kernel`` sizes, or its
    pools' kind, changed."""
    spec = copy.deepcopy(specs.lenet())
    convs = [layer for layer in spec["layers"] if layer["kind"] == "conv"]
    for index, conv in enumerate(convs):
        if filters is not None:
            conv["channels"] = filters[index]
        if kernel is not None:
            conv["kernel"] = kernel
    for layer in spec["layers"]:
        if layer["kind"] == "pool" and pool is not None:
            layer["pool"] = pool
    return specs.validate({**spec, "name": name})


VARIANTS = {
    "filters-6-16": variant("filters-6-16", filters=(6, 16)),
    "lenet": specs.lenet(),  # filters 20/50, kernels 5 and 3, max pools: the tutorial's
    "filters-40-100": variant("filters-40-100", filters=(40, 100)),
    "kernels-3": variant("kernels-3", kernel=3),
    "kernels-5": variant("kernels-5", kernel=5),
    "kernels-7": variant("kernels-7", kernel=7),
    "avg-pool": variant("avg-pool", pool="avg"),
    "mlp": specs.mlp(),
}


def train_variant(spec: dict, dataset, epochs: int, limit, device="auto", impl="auto") -> dict:
    config = train.Config(**{**train.RECIPES["tutorial"], "model": spec, "epochs": epochs,
                             "limit": limit, "impl": impl})
    _, history = train.fit(config, dataset, device=device, log=lambda _: None,
                           warn=lambda _: None)
    seconds = [record["seconds"] for record in history]
    model = models.build(spec)
    rows = models.summary(model)
    return {"variant": spec["name"] + (f" ({device}, {impl}, {epochs} epochs)" if device != "auto"
                                       else ""),
            "parameters": sum(row.params for row in rows),
            "mflops": sum(row.flops for row in rows) / 1e6,
            "seconds": statistics.median(seconds[1:] or seconds),
            "test_acc": history[-1]["test_acc"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=train.RECIPES["tutorial"]["epochs"])
    parser.add_argument("--limit", type=int, help="train on the first N images only")
    parser.add_argument("--only", nargs="+", choices=(*VARIANTS, "cpu-gpu"),
                        help="run these rows only")
    parser.add_argument("--gpu-epochs", type=int, default=2,
                        help="epochs of the CPU-vs-GPU row (the reference on the CPU is slow)")
    parser.add_argument("--save-specs", metavar="DIR", help="write each variant's spec there")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    if args.save_specs:
        folder = pathlib.Path(args.save_specs)
        folder.mkdir(parents=True, exist_ok=True)
        for name, spec in VARIANTS.items():
            (folder / f"{name}.json").write_text(specs.dumps(spec) + "\n")
        print(f"wrote {len(VARIANTS)} specs into {folder}")
    dataset = data.load_fashion_mnist(args.data_dir)
    rows = []
    for name, spec in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        rows.append(train_variant(spec, dataset, args.epochs, args.limit))
        print(json.dumps(rows[-1]), flush=True)
    notes = []
    if not args.only or "cpu-gpu" in args.only:
        if any(device.platform == "gpu" for device in jax.devices()):
            for device in ("cpu", "gpu"):
                rows.append(train_variant(specs.lenet(), dataset, args.gpu_epochs, args.limit,
                                          device=device, impl="reference"))
                print(json.dumps(rows[-1]), flush=True)
        else:
            notes.append("cpu vs gpu: skipped, JAX sees no GPU here (install JAX for CUDA: "
                         "README, 'On a GPU')")
    print(f"\n| variant | parameters | MFLOPs/image | s/epoch | test acc after "
          f"{args.epochs} epochs |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['parameters']:,} | {row['mflops']:.2f} | "
              f"{row['seconds']:.2f} | {row['test_acc']:.4f} |")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()

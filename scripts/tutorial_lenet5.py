"""The classic sigmoid LeNet-5 of the tutorial: the layer-by-layer output shapes of one 28x28
image, then training with Xavier initialisation, SGD with lr 0.9, batch 256."""

import argparse

from jaxlenet import data, models, train


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.9)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--limit", type=int, help="train on the first N images only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir")
    args = parser.parse_args()

    for row in models.summary(models.build("lenet5", init="xavier")):
        print(f"{row.name} output shape:\t {row.shape}")
    config = train.Config(**{**train.RECIPES["tutorial-lenet5"], "epochs": args.epochs,
                             "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                             "limit": args.limit})
    train.fit(config, data.load_fashion_mnist(args.data_dir))


if __name__ == "__main__":
    main()

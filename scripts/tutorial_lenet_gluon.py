"""The Gluon-style LeNet (a sequence of layers: Conv2D(20, 5, relu), MaxPool2D(2, 2),
Conv2D(50, 3, relu), MaxPool2D(2, 2), Flatten, Dense(128, relu), Dense(10)) trained with the
tutorial's recipe: MXNet's default uniform(0.07) init, SGD with lr 0.5, batch 256. One line per
epoch: loss, train acc, test acc, seconds."""

import argparse

from jaxlenet import data, models, train


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--limit", type=int, help="train on the first N images only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir")
    args = parser.parse_args()

    print(models.format_summary(models.build("lenet", init="uniform"), args.batch_size))
    config = train.Config(**{**train.RECIPES["tutorial"], "epochs": args.epochs,
                             "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                             "limit": args.limit})
    train.fit(config, data.load_fashion_mnist(args.data_dir))


if __name__ == "__main__":
    main()

"""Figures a person would rather look at than read: training curves and a grid of predictions.
matplotlib is imported lazily, with the non-interactive Agg backend."""

from __future__ import annotations

import io
import pathlib

import numpy as np

from jaxlenet._files import atomic_write


def pyplot():
    """``matplotlib.pyplot``, on the non-interactive Agg backend, imported on first use (~0.4 s:
    the command imports it in a thread while training runs)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(history: list[dict], path) -> pathlib.Path:
    """Training loss (left) and train/test accuracy (right) per epoch, as the tutorial's
    animator draws them."""
    plt = pyplot()
    epochs = [m["epoch"] for m in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [m["loss"] for m in history], "o-", label="train loss")
    if all("test_loss" in m for m in history):
        left.plot(epochs, [m["test_loss"] for m in history], "s--", label="test loss")
    left.set_xlabel("epoch")
    left.set_ylabel("cross-entropy")
    left.legend()
    right.plot(epochs, [m["train_acc"] for m in history], "o-", label="train acc")
    right.plot(epochs, [m["test_acc"] for m in history], "s--", label="test acc")
    right.set_xlabel("epoch")
    right.set_ylabel("accuracy")
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.set_xticks(epochs if len(epochs) <= 20 else ax.get_xticks())
    fig.tight_layout()
    return _save(plt, fig, path)


def plot_predictions(images, labels, predicted, class_names, path, *, columns: int = 8
                     ) -> pathlib.Path:
    """A grid of images (N, 28, 28) titled 'predicted / true'; mistakes in red. One image of
    the whole grid with the titles as text over it (a subplot per image takes ~5x longer)."""
    plt = pyplot()
    images = np.asarray(images)
    count, (height, width) = len(images), images.shape[1:]
    rows = -(-count // columns)
    cell_h, cell_w = height + 14, width + 4  # room for two lines of title above each image
    grid = np.full((rows * cell_h, columns * cell_w), np.nan)
    for i, image in enumerate(images):
        top, left = (i // columns) * cell_h + 12, (i % columns) * cell_w + 2
        grid[top:top + height, left:left + width] = image
    fig = plt.figure(figsize=(1.5 * columns, 1.75 * rows + 0.3))
    ax = fig.add_axes((0, 0, 1, 1 - 0.3 / (1.75 * rows + 0.3)))
    ax.axis("off")
    ax.imshow(np.ma.masked_invalid(grid), cmap="gray_r" if images.max() <= 1 else "gray",
              interpolation="nearest")
    for i, (true, guess) in enumerate(zip(labels, predicted)):
        ax.text((i % columns) * cell_w + cell_w / 2, (i // columns) * cell_h + 11,
                f"{class_names[int(guess)]}\n/ {class_names[int(true)]}", fontsize=7,
                ha="center", va="bottom", color="red" if int(true) != int(guess) else "black")
    fig.suptitle("predicted / true (mistakes in red)", fontsize=9)
    return _save(plt, fig, path)


def _save(plt, fig, path) -> pathlib.Path:
    """Writes ``fig`` whole or not at all (a full disk never leaves half a picture over the
    last one), in the format ``path``'s suffix names."""
    path = pathlib.Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix[1:] or "png", dpi=100)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
    return path

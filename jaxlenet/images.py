"""Reads user images (PNG, JPEG, any size or mode) as Fashion-MNIST-like inputs."""

from __future__ import annotations

import pathlib

import numpy as np


def load_images(paths, *, invert: str = "auto") -> np.ndarray:
    """float32 (N, 1, 28, 28) in [0, 1]: each image greyscaled and resized to 28x28. Fashion-MNIST
    shows light garments on black; ``invert='auto'`` inverts an image whose border is light."""
    from PIL import Image, UnidentifiedImageError

    if invert not in ("auto", "yes", "no"):
        raise ValueError(f"invert {invert!r} is not 'auto', 'yes' or 'no'")
    batch = []
    for path in map(pathlib.Path, paths):
        try:
            with Image.open(path) as image:
                grey = image.convert("L").resize((28, 28), Image.Resampling.LANCZOS)
        except FileNotFoundError:
            raise ValueError(f"{path}: no such image file") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"{path}: not a readable PNG/JPEG image ({exc})") from None
        pixels = np.asarray(grey, np.float32) / 255.0
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        if invert == "yes" or (invert == "auto" and border.mean() > 0.5):
            pixels = 1.0 - pixels
        batch.append(pixels)
    return np.stack(batch)[:, None]

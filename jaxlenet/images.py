"""Reads user images (PNG, JPEG, any size or mode) as Fashion-MNIST-like inputs."""

from __future__ import annotations

import pathlib
import warnings

import numpy as np

# Larger images are refused before they are decoded: their pixels alone would take gigabytes.
MAX_PIXELS = 64_000_000


def load_images(paths, *, invert: str = "auto") -> np.ndarray:
    """float32 (N, 1, 28, 28) in [0, 1]: each image greyscaled and resized to 28x28. Fashion-MNIST
    shows light garments on black; ``invert='auto'`` inverts an image whose border is light.

    Images are read as a person sees them: turned as their EXIF orientation says (a phone's
    photo), and transparent pixels composited onto white (the page a viewer shows them on)
    before they are greyscaled. Every mode Pillow reads is scaled by its own range: 8-bit modes
    by 255, 16-bit greyscale by 65,535 (and 32-bit integer greyscale, as Pillow opens 16-bit
    PNGs, by 65,535 when its values fit 16 bits). Floating-point images, images larger than
    ``MAX_PIXELS`` and unreadable files are refused (``ValueError`` naming the file)."""
    if invert not in ("auto", "yes", "no"):
        raise ValueError(f"invert {invert!r} is not 'auto', 'yes' or 'no'")
    batch = []
    for path in map(pathlib.Path, paths):
        pixels = _greyscale(path)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        if invert == "yes" or (invert == "auto" and border.mean() > 0.5):
            pixels = 1.0 - pixels
        batch.append(pixels)
    return np.stack(batch)[:, None]


def _greyscale(path: pathlib.Path) -> np.ndarray:
    """(28, 28) float32 in [0, 1]."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                if width * height > MAX_PIXELS:
                    raise ValueError(f"{path}: {width} x {height} pixels, more than the "
                                     f"{MAX_PIXELS:,} predict reads; scale it down first")
                image = ImageOps.exif_transpose(opened)
                if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
                    values = np.asarray(image, np.float64)
                    if values.size and (values.min() < 0 or values.max() > 65535):
                        raise ValueError(f"{path}: 32-bit integer pixels beyond 16 bits "
                                         f"(mode {image.mode}) are not supported")
                    grey = Image.fromarray((values / 65535.0).astype(np.float32), mode="F")
                    scale = 1.0
                elif image.mode == "F":
                    raise ValueError(f"{path}: floating-point pixels (mode F) have no known "
                                     "range; save the image with 8 or 16 bits per pixel")
                elif image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
                        "transparency" in image.info):
                    rgba = image.convert("RGBA")
                    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    grey, scale = Image.alpha_composite(white, rgba).convert("L"), 1 / 255.0
                else:
                    grey, scale = image.convert("L"), 1 / 255.0
                grey = grey.resize((28, 28), Image.Resampling.LANCZOS)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such image file") from None
    except Image.DecompressionBombError:
        raise ValueError(f"{path}: too many pixels to decode safely; scale it down first") \
            from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: not a readable PNG/JPEG image ({exc})") from None
    return np.clip(np.asarray(grey, np.float32) * scale, 0.0, 1.0)

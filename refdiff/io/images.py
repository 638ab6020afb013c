"""Pictures: image grids and 2-D scatter plots written as PNG with Pillow (no matplotlib needed).

Plumbing for the Trainer, the CLI and the examples. Inputs are NumPy arrays in the model's data
range [-1, 1]; nothing here knows about diffusion.
"""
import math
import os

import numpy as np


def to_uint8(images):
    """(N, C, H, W) float in [-1, 1] -> (N, H, W, C) uint8 in [0, 255] (values outside are clipped)."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {images.shape}")
    if not np.all(np.isfinite(images)):
        raise ValueError("images contain NaN or infinite values")
    pixels = np.clip((images + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return pixels.transpose(0, 2, 3, 1)


def image_grid(images, nrow=None, padding=1, scale=None):
    """Tile (N, C, H, W) images in [-1, 1] into one (H', W', 3) uint8 array.

    nrow: images per row (default ceil(sqrt(N))); scale: integer nearest-neighbour upscaling
    (default: enough to make each tile at least 48 pixels wide, so 8x8 digits stay visible).
    """
    pixels = to_uint8(images)
    n, h, w, c = pixels.shape
    if c == 1:
        pixels = np.repeat(pixels, 3, axis=3)
    elif c != 3:
        raise ValueError(f"images must have 1 or 3 channels, got {c}")
    if scale is None:
        scale = max(1, math.ceil(48 / w))
    pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol_rows = math.ceil(n / nrow)
    grid = np.full((ncol_rows * (h + padding) + padding, nrow * (w + padding) + padding, 3), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y0, x0 = padding + r * (h + padding), padding + col * (w + padding)
        grid[y0 : y0 + h, x0 : x0 + w] = pixels[i]
    return grid


def save_image_grid(images, path, nrow=None, padding=1, scale=None):
    """Write (N, C, H, W) images in [-1, 1] as one PNG grid at `path`; returns the path."""
    from PIL import Image

    _make_parent(path)
    Image.fromarray(image_grid(images, nrow=nrow, padding=padding, scale=scale)).save(path)
    return path


def save_scatter(points, path, reference=None, size=512, limits=None, title=None):
    """Write a PNG scatter plot of 2-D `points` (N, 2); optional `reference` points drawn in grey behind.

    limits: (lo, hi) for both axes (default: from the data with a 10% margin).
    """
    from PIL import Image, ImageDraw

    points = _check_points(points, "points")
    layers = [points] if reference is None else [_check_points(reference, "reference"), points]
    if limits is None:
        everything = np.concatenate(layers)
        lo, hi = float(everything.min()), float(everything.max())
        margin = 0.1 * max(hi - lo, 1e-6)
        limits = (lo - margin, hi + margin)
    lo, hi = limits
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    colours = [(200, 40, 40)] if reference is None else [(170, 170, 170), (200, 40, 40)]
    for layer, colour in zip(layers, colours):
        px = (layer - lo) / (hi - lo) * (size - 1)
        for x, y in px:
            y = size - 1 - y  # y axis points up
            draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=colour)
    if title:
        draw.text((6, 4), title, fill=(0, 0, 0))
    _make_parent(path)
    image.save(path)
    return path


def _check_points(points, name):
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError(f"{name} contain NaN or infinite values")
    return points


def _make_parent(path):
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)

"""Sample grids and scatter plots to PNG (PIL only)."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw

from diffusion_jax import data


def image_grid(images: np.ndarray, *, padding: int = 2, min_cell: int = 64) -> np.ndarray:
  """Tiles uint8 images `(N, H, W, C)` into one `(rows*H', cols*W', 3)` image, upscaling small ones (nearest).

  Args:
    images: uint8, C in {1, 3}.
    padding: pixels between cells.
    min_cell: images smaller than this are enlarged by an integer factor.

  Returns:
    uint8 RGB array.
  """
  if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be uint8 of shape (N, H, W, 1 or 3), got {images.dtype} {images.shape}.")
  n, h, w, c = images.shape
  scale = max(1, math.ceil(min_cell / max(h, w)))
  images = images.repeat(scale, 1).repeat(scale, 2)
  if c == 1:
    images = images.repeat(3, -1)
  cols = math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  H, W = h * scale + padding, w * scale + padding
  grid = np.full((rows * H + padding, cols * W + padding, 3), 255, np.uint8)
  for i, img in enumerate(images):
    r, col = divmod(i, cols)
    grid[padding + r * H: padding + r * H + h * scale, padding + col * W: padding + col * W + w * scale] = img
  return grid


def save_image_grid(images: np.ndarray, path: str) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  Image.fromarray(image_grid(images)).save(path)


def save_scatter(points: np.ndarray, path: str, reference: np.ndarray | None = None, size: int = 512,
                 extent: float = 3.0) -> None:
  """2-D samples (red) over reference data (grey) in [-extent, extent]^2, as a PNG."""
  img = Image.new("RGB", (size, size), "white")
  draw = ImageDraw.Draw(img)
  to_px = lambda p: ((p[0] + extent) / (2 * extent) * size, (extent - p[1]) / (2 * extent) * size)
  for pts, colour in ((reference, (170, 170, 170)), (points, (200, 30, 30))):
    for p in ([] if pts is None else np.asarray(pts)):
      x, y = to_px(p)
      draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=colour)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  img.save(path)


def save_samples(samples: np.ndarray, path: str, info: data.DatasetInfo, dataset: str) -> None:
  """A grid of image samples in [-1, 1], or a scatter plot of 2-D samples against the data."""
  if info.is_image:
    save_image_grid(data.to_uint8(samples), path)
  else:
    save_scatter(samples, path, reference=data.toy_reference(dataset))

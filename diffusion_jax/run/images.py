"""Sample grids and scatter plots to PNG (PIL only)."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw

from diffusion_jax.run import data

MAX_COLUMNS = 16  # a class's samples wrap onto further rows past this many
MAX_SHOWN = 1024  # images in one PNG grid; the .npz holds every sample


def class_cells(labels: np.ndarray, max_columns: int = MAX_COLUMNS) -> tuple[np.ndarray, int]:
  """Grid cells for samples of several classes: each class starts a row, in the order the classes first appear.

  Args:
    labels: int class of each sample, shape `(n,)`.
    max_columns: a class's samples wrap onto further rows past this many.

  Returns:
    (cell index of each sample in a row-major grid, shape `(n,)`; the grid's columns).
  """
  labels = np.asarray(labels)
  classes = labels[np.sort(np.unique(labels, return_index=True)[1])]
  counts = [int((labels == c).sum()) for c in classes]
  columns = min(max_columns, max(counts))
  cells, row = np.zeros(len(labels), np.int64), 0
  for c, count in zip(classes, counts):
    cells[labels == c] = row * columns + np.arange(count)
    row += -(-count // columns)
  return cells, columns


def image_grid(images: np.ndarray, *, columns: int | None = None, cells: np.ndarray | None = None,
               padding: int = 2, min_cell: int = 64, row_titles: dict[int, str] | None = None) -> np.ndarray:
  """Tiles uint8 images `(N, H, W, C)` into one `(rows*H', cols*W', 3)` image, upscaling small ones (nearest).

  Args:
    images: uint8, C in {1, 3}.
    columns: images per row; None for a square grid.
    cells: the row-major cell of each image, shape `(N,)` (e.g. `class_cells`); None: 0, 1, ..., N - 1.
    padding: pixels between cells.
    min_cell: images smaller than this are enlarged by an integer factor.
    row_titles: row -> a title written left of that row (e.g. a class's name at its first row).

  Returns:
    uint8 RGB array; cells that no image fills are white.
  """
  if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3) or not len(images):
    raise ValueError(f"images must be uint8 of shape (N >= 1, H, W, 1 or 3), got {images.dtype} {images.shape}.")
  n, h, w, c = images.shape
  cells = np.arange(n) if cells is None else np.asarray(cells)
  if cells.shape != (n,):
    raise ValueError(f"cells must have shape ({n},), got {cells.shape}.")
  scale = max(1, math.ceil(min_cell / max(h, w)))
  images = images.repeat(scale, 1).repeat(scale, 2)
  if c == 1:
    images = images.repeat(3, -1)
  cols = columns or math.ceil(math.sqrt(n))
  rows = int(cells.max()) // cols + 1
  H, W = h * scale + padding, w * scale + padding
  grid = np.full((rows * H + padding, cols * W + padding, 3), 255, np.uint8)
  for cell, img in zip(cells, images):
    r, col = divmod(int(cell), cols)
    grid[padding + r * H: padding + r * H + h * scale, padding + col * W: padding + col * W + w * scale] = img
  if not row_titles:
    return grid
  margin = 6 * max(len(t) for t in row_titles.values()) + 2 * padding + 4
  titled = Image.new("RGB", (margin + grid.shape[1], grid.shape[0]), "white")
  titled.paste(Image.fromarray(grid), (margin, 0))
  draw = ImageDraw.Draw(titled)
  for r, title in row_titles.items():
    draw.text((padding + 2, padding + r * H + max(0, (h * scale - 10) // 2)), title, fill="black")
  return np.asarray(titled)


def save_scatter(points: np.ndarray, path: str, reference: np.ndarray | None = None, size: int = 512,
                 extent: float = 3.0, title: str | None = None) -> None:
  """2-D samples (red) over reference data (grey) in [-extent, extent]^2, as a PNG, with an optional title line."""
  img = Image.new("RGB", (size, size), "white")
  draw = ImageDraw.Draw(img)
  to_px = lambda p: ((p[0] + extent) / (2 * extent) * size, (extent - p[1]) / (2 * extent) * size)
  for pts, colour in ((reference, (170, 170, 170)), (points, (200, 30, 30))):
    for p in ([] if pts is None else np.asarray(pts)):
      x, y = to_px(p)
      draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=colour)
  if title:
    draw.text((6, 6), title, fill="black")
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  img.save(path)


def _short(name: str, limit: int = 24) -> str:
  """`name` as a grid's row title: ASCII (the default font's), at most `limit` characters."""
  name = name.encode("ascii", "replace").decode()
  return name if len(name) <= limit else name[:limit - 3] + "..."


def save_samples(samples: np.ndarray, path: str, info: data.DatasetInfo, dataset: str, *,
                 labels: np.ndarray | None = None, title: str | None = None) -> int:
  """The first `MAX_SHOWN` image samples in [-1, 1] as a grid (a block of rows per class when `labels` are
  given, each titled with the class's name where the data names its classes, else square), or a scatter plot of
  2-D samples with `title` on it.

  Returns:
    How many samples the file shows.
  """
  if not info.is_image:
    save_scatter(samples, path, reference=data.toy_reference(dataset), title=title)
    return len(samples)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  shown = data.to_uint8(samples[:MAX_SHOWN])
  cells, columns, titles = None, None, None
  if labels is not None:
    cells, columns = class_cells(labels[:MAX_SHOWN])
    if info.class_names:  # each class's name at its first row
      shown_labels = np.asarray(labels[:MAX_SHOWN])
      titles = {int(cells[shown_labels == c].min()) // columns: _short(info.class_names[int(c)])
                for c in np.unique(shown_labels)}
  Image.fromarray(image_grid(shown, columns=columns, cells=cells, row_titles=titles)).save(path)
  return len(shown)


_COLOURS = [(200, 30, 30), (30, 90, 200), (30, 150, 60), (150, 60, 180), (230, 130, 0), (0, 150, 160), (120, 120, 0),
            (220, 60, 150), (90, 60, 30)]


def _line_plot(draw: ImageDraw.ImageDraw, left: int, panel: tuple[int, int], xs: list[float],
               lines: dict[str, list[float]], ref: float | None, title: str, x_label: str) -> None:
  """One panel of `save_line_plots`, with its left edge at `left`: each line y against `xs`, a legend for several."""
  W, H = panel
  margin = 42
  values = [y for ys in lines.values() for y in ys] + ([] if ref is None else [ref])
  x_lo, x_hi = min(xs), (max(xs) if max(xs) > min(xs) else min(xs) + 1)
  y_lo, y_hi = min(values), (max(values) if max(values) > min(values) else min(values) + 1)

  def px(x: float, y: float) -> tuple[float, float]:
    return (left + margin + (x - x_lo) / (x_hi - x_lo) * (W - 1.5 * margin),
            H - margin - (y - y_lo) / (y_hi - y_lo) * (H - 1.7 * margin))

  draw.rectangle((left + margin, 0.7 * margin, left + W - margin / 2, H - margin), outline=(120, 120, 120))
  if ref is not None:
    (x0, y), (x1, _) = px(x_lo, ref), px(x_hi, ref)
    for a in np.arange(x0, x1, 8):
      draw.line((a, y, min(a + 4, x1), y), fill=(150, 150, 150))
  for i, (name, ys) in enumerate(lines.items()):
    colour = _COLOURS[i % len(_COLOURS)]
    points = [px(x, y) for x, y in zip(xs, ys)]
    draw.line(points, fill=colour, width=2)
    for x, y in points:
      draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    if len(lines) > 1:
      draw.text((left + W - margin / 2 - 6 * len(name) - 4, 0.7 * margin + 4 + 12 * i), name, fill=colour)
  draw.text((left + margin, 8), title, fill="black")
  for x in xs:
    draw.text((px(x, y_lo)[0] - 6, H - margin + 4), f"{x:g}", fill="black")
  draw.text((left + W / 2 - 30, H - 16), x_label, fill="black")
  for y in (y_lo, y_hi):
    draw.text((left + 2, px(x_lo, y)[1] - 6), f"{y:.3g}", fill="black")


def save_line_plots(xs: list[float], series: dict[str, list[float] | dict[str, list[float]]], path: str, *,
                    x_label: str = "x", baselines: dict[str, float] | None = None,
                    panel: tuple[int, int] = (320, 220)) -> None:
  """One small line plot per series (y against `xs`), side by side, as a PNG; a series' baseline dashed in grey.

  Args:
    xs: the x values, shared by every series.
    series: panel name -> y values, one per x, or -> {line name: y values} for several lines in one panel.
    path: the PNG to write.
    x_label: the x axis's name.
    baselines: name -> a reference value drawn as a horizontal dashed line (e.g. real data's).
    panel: (width, height) of each plot in pixels.
  """
  W, H = panel
  img = Image.new("RGB", (W * len(series), H), "white")
  draw = ImageDraw.Draw(img)
  for i, (name, ys) in enumerate(series.items()):
    ref = None if baselines is None else baselines.get(name)
    lines = {k: list(v) for k, v in ys.items()} if isinstance(ys, dict) else {name: list(ys)}
    _line_plot(draw, i * W, (W, H), list(xs), lines, ref, name, x_label)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  img.save(path)

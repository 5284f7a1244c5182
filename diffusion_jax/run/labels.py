"""Which classes a class-conditional run draws, decided once in `build` and passed down.

`--mode sample`, the training previews and the quality figures all draw the chosen classes in turn
(sample i has class `classes[i % len(classes)]`), so any number of samples is drawn exactly, and the grids
show one block of rows per class (`images.class_cells`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from diffusion_jax.run.config import parse_labels


@dataclasses.dataclass(frozen=True)
class LabelLayout:
  """The classes a class-conditional model is sampled with, in the order of the grid's rows.

  Attributes:
    classes: the chosen classes (`sampling.labels`: every class for "all").
    num_classes: K, the number of classes of the data; K is also the null label.
  """

  classes: tuple[int, ...]
  num_classes: int

  def labels(self, num_samples: int) -> np.ndarray:
    """int32 labels of shape `(num_samples,)`: the chosen classes in turn."""
    return np.resize(np.asarray(self.classes, np.int32), num_samples)

  def every_class(self, num_samples: int) -> np.ndarray:
    """int32 labels of shape `(num_samples,)`: 0, 1, ..., K - 1, 0, ... (the quality figures' draw)."""
    return (np.arange(num_samples) % self.num_classes).astype(np.int32)


def label_layout(labels: str, num_classes: int, dataset: str) -> LabelLayout:
  """The layout of `sampling.labels` for data of `num_classes` classes.

  Args:
    labels: `sampling.labels`: "all" or comma-separated classes such as "3,7".
    num_classes: K of the data.
    dataset: the data's name, for the error message.

  Returns:
    The layout.

  Raises:
    ValueError: a label outside [0, K).
  """
  chosen = parse_labels(labels)
  chosen = tuple(range(num_classes)) if chosen is None else chosen
  if max(chosen) >= num_classes:
    raise ValueError(f"sampling.labels = {labels!r} has labels outside [0, {num_classes}): "
                     f"data.dataset = {dataset!r} has {num_classes} classes.")
  return LabelLayout(chosen, num_classes)

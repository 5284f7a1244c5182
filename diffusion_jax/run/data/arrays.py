"""`data.dataset = 'arrays'`: images in a NumPy file, prepared once into records (`prepared`), as a folder is.

`data.path` is an `.npz` with `images`, uint8 of shape (N, H, W, C) with C 1 or 3, and optionally `labels`, N
integers in [0, K) (class i is named "i"), or an `.npy` holding the images alone. Images of another size than
`data.image_size` (None: as stored), or another channel count than `data.channels`, are converted as a folder's
(`folder.to_array`). Image i is held out when `prepared.held_out(str(i), data.eval_fraction)`. The preparation is
keyed by the file's path, size and modification time and the settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import ml_collections
import numpy as np
import PIL.Image

from diffusion_jax.run.data import prepared
from diffusion_jax.run.data.folder import to_array

FORMAT = 1  # of the records arrays are prepared into; part of the fingerprint


def load_arrays(path: str) -> tuple[np.ndarray, np.ndarray | None]:
  """(images uint8 (N, H, W, C), labels int64 (N,) or None) of `data.path`, checked.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not .npz/.npy, no `images`, a wrong dtype or rank, labels that do not match the images.
  """
  if not path.endswith((".npz", ".npy")):
    raise ValueError(f"data.path = {path!r} is invalid; allowed: an .npz file (images, labels) or an .npy file.")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"data.path = {path!r}: no such file.")
  if path.endswith(".npy"):
    images, labels = np.load(path, mmap_mode="r", allow_pickle=False), None  # read as the records are written
  else:
    with np.load(path, allow_pickle=False) as f:
      if "images" not in f:
        raise ValueError(f"data.path = {path!r} has no array 'images' (it has {sorted(f.files)}); store the images "
                         "as images=, uint8 (N, H, W, C), and the optional labels as labels=.")
      images, labels = f["images"], (f["labels"] if "labels" in f else None)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or not len(images):
    raise ValueError(f"data.path = {path!r}: images are {images.dtype} of shape {images.shape}; allowed: uint8 of "
                     "shape (N >= 1, H, W, C) with C 1 or 3.")
  if labels is not None:
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
      raise ValueError(f"data.path = {path!r}: labels are {labels.dtype} of shape {labels.shape}; allowed: "
                       f"{len(images)} integers >= 0, one per image.")
    labels = labels.astype(np.int64)
  return images, labels


@dataclasses.dataclass(frozen=True)
class ArrayReader:
  """Image i (and its label) of in-memory arrays, converted to `size` x `size` x `channels`."""

  images: np.ndarray
  labels: np.ndarray | None
  size: int
  channels: int

  def read(self, i: int) -> tuple[np.ndarray, int | None, bool]:
    image = self.images[i]
    label = None if self.labels is None else int(self.labels[i])
    if image.shape == (self.size, self.size, self.channels):
      return image, label, False
    pixels, upscaled = to_array(PIL.Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image),
                                self.size, self.channels)
    return pixels, label, upscaled

  def describe(self, i: int) -> str:
    return f"image {i}"


def prepare_arrays(data_config: ml_collections.ConfigDict, labelled: bool) -> str:
  """The prepared records of `data.path` (prepared now unless this file and these settings already were).

  Args:
    data_config: `config.data` (`path`, `image_size`, `channels`, `eval_fraction`, `data_dir`).
    labelled: store the labels (`model.class_conditional`); `ValueError` if the file has none.

  Returns:
    The prepared dataset's directory.
  """
  path = os.path.abspath(os.path.expanduser(data_config.path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"data.path = {data_config.path!r}: no such file.")
  stat = os.stat(path)
  settings = {"format": FORMAT, "path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
              "image_size": data_config.image_size, "channels": data_config.channels,
              "eval_fraction": data_config.eval_fraction, "labelled": labelled}
  final = os.path.join(prepared.default_root(data_config.data_dir),
                       f"arrays-{hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]}")
  return prepared.ensure(final, lambda final: _write(final, data_config, labelled, settings))


def _write(final: str, data_config: ml_collections.ConfigDict, labelled: bool, settings: dict[str, object]) -> None:
  """Reads and checks `data.path`, then writes its records to `final`."""
  images, labels = load_arrays(settings["path"])
  if labelled and labels is None:
    raise ValueError(f"model.class_conditional = True needs labels, and data.path = {data_config.path!r} has no "
                     "array 'labels'.")
  if data_config.image_size is None and images.shape[1] != images.shape[2]:
    raise ValueError(f"data.path = {data_config.path!r} holds {images.shape[1]}x{images.shape[2]} images; set "
                     "data.image_size to crop them square.")
  size = data_config.image_size or images.shape[1]
  kept = labels if labelled else None
  classes = None if kept is None else tuple(str(k) for k in range(int(kept.max()) + 1))
  splits = prepared.held_out_splits(range(len(images)), [str(i) for i in range(len(images))],
                                    data_config.eval_fraction, f"the {len(images)} images of data.path")
  prepared.write(final, name="arrays", reader=ArrayReader(images, kept, size, data_config.channels), splits=splits,
                 shape=(size, size, data_config.channels), class_names=classes, num_workers=0, source=settings)

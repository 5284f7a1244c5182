"""`data.dataset = 'folder'`: a directory tree of image files, prepared once into records (`prepared`).

What is read: every file under `data.image_dir` (links followed, names starting with "." ignored) whose extension
is one of `IMAGE_EXTENSIONS`; other files are ignored. Each image is converted by `to_pixels`:

- EXIF orientation applied; a GIF's (or any animation's) first frame;
- transparency (RGBA, LA, palette with transparency) composited over white;
- 16-bit grey scaled to 8 bits (v / 257); CMYK and other colour spaces converted to RGB;
- `data.channels = 3`: grey replicated to RGB; `data.channels = 1`: luma, L = 0.299 R + 0.587 G + 0.114 B (PIL).

Then `resize_and_crop` resizes its shorter side to `data.image_size` with PIL's antialiased bicubic filter and
keeps the central square; smaller images are upscaled (counted, with a warning). Unreadable or truncated files are
skipped and counted (the first names in the log and all of them in `preparation.json`).

Labels: the first-level subdirectory names, sorted: class i is the i-th name. Split: a file is held out ('test')
when the hash of its path relative to the folder falls below `data.eval_fraction` (`prepared.held_out`), so adding
files never moves another. The preparation is keyed by a fingerprint of every image file's path, size and
modification time and of the settings: an unchanged folder is never prepared twice, a changed one is prepared again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import ml_collections
import numpy as np
import PIL.Image
import PIL.ImageOps

from diffusion_jax.run.data import prepared

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
FORMAT = 1  # of the records a folder is prepared into; part of the fingerprint


@dataclasses.dataclass(frozen=True)
class ImageFile:
  """An image file: its path relative to the folder (with "/"), size in bytes and modification time in ns."""

  path: str
  size: int
  mtime_ns: int


def scan(image_dir: str) -> list[ImageFile]:
  """Every image file under `image_dir`, sorted by path.

  Raises:
    FileNotFoundError: `image_dir` is missing or not a directory.
    ValueError: it holds no image file.
  """
  root = os.path.abspath(os.path.expanduser(image_dir))
  if not os.path.isdir(root):
    raise FileNotFoundError(f"data.image_dir = {image_dir!r} is not a directory.")
  found = []
  for here, dirs, names in os.walk(root, followlinks=True):
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    for name in names:
      if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
        stat = os.stat(os.path.join(here, name))
        found.append(ImageFile(os.path.relpath(os.path.join(here, name), root).replace(os.sep, "/"), stat.st_size,
                               stat.st_mtime_ns))
  if not found:
    raise ValueError(f"data.image_dir = {image_dir!r} holds no image files (allowed extensions: "
                     f"{', '.join(IMAGE_EXTENSIONS)}).")
  return sorted(found, key=lambda f: f.path)


def class_names(images: list[ImageFile], image_dir: str) -> tuple[str, ...]:
  """The sorted first-level subdirectories that hold the images; `ValueError` if an image lies outside them."""
  loose = [f.path for f in images if "/" not in f.path]
  if len(loose) == len(images):
    raise ValueError(f"model.class_conditional = True takes the labels from the subdirectories of data.image_dir = "
                     f"{image_dir!r}, and it has none: put each class's images in a folder of its own.")
  if loose:
    raise ValueError(f"model.class_conditional = True takes the labels from the subdirectories of data.image_dir = "
                     f"{image_dir!r}, but {len(loose)} images lie outside them (the first: {loose[0]!r}).")
  return tuple(sorted({f.path.split("/", 1)[0] for f in images}))


def to_pixels(image: PIL.Image.Image, channels: int) -> PIL.Image.Image:
  """`image` as 8-bit grey ("L", `channels` 1) or RGB (`channels` 3), per the module's rules."""
  image = PIL.ImageOps.exif_transpose(image)
  if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    pixels = np.asarray(image, np.float64)
    image = PIL.Image.fromarray(np.clip(np.round(pixels / 257.0 if image.mode != "F" else pixels), 0, 255)
                                .astype(np.uint8))
  if image.mode == "P":
    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
  if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
    rgba = image.convert("RGBA")
    image = PIL.Image.alpha_composite(PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
  return image.convert("L" if channels == 1 else "RGB")


def resize_and_crop(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
  """The shorter side resized to `size` (antialiased bicubic), then the central `size` x `size` square."""
  w, h = image.size
  if min(w, h) != size:
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), PIL.Image.BICUBIC)
    w, h = image.size
  left, top = (w - size) // 2, (h - size) // 2
  return image.crop((left, top, left + size, top + size))


def to_array(image: PIL.Image.Image, size: int, channels: int) -> tuple[np.ndarray, bool]:
  """uint8 `(size, size, channels)` pixels of `image`, and whether it was upscaled (its shorter side < size)."""
  pixels = resize_and_crop(to_pixels(image, channels), size)
  return np.asarray(pixels, np.uint8).reshape(size, size, channels), min(image.size) < size


@dataclasses.dataclass(frozen=True)
class FolderReader:
  """Reads the image files of one folder (in a worker process) as `size` x `size` x `channels` pixels."""

  root: str
  size: int
  channels: int
  classes: tuple[str, ...] | None

  def read(self, item: ImageFile) -> tuple[np.ndarray, int | None, bool]:
    try:
      with PIL.Image.open(os.path.join(self.root, item.path)) as image:
        image.load()
        pixels, upscaled = to_array(image, self.size, self.channels)
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
      raise prepared.SkipImage(f"{type(e).__name__}: {e}") from None
    label = None if self.classes is None else self.classes.index(item.path.split("/", 1)[0])
    return pixels, label, upscaled

  def describe(self, item: ImageFile) -> str:
    return item.path


def prepare_folder(data_config: ml_collections.ConfigDict, labelled: bool, num_workers: int) -> str:
  """The prepared records of `data.image_dir` (prepared now unless this folder and these settings already were).

  Args:
    data_config: `config.data` (`image_dir`, `image_size`, `channels`, `eval_fraction`, `data_dir`).
    labelled: store the labels of the subdirectories (`model.class_conditional`).
    num_workers: worker processes that decode the images.

  Returns:
    The prepared dataset's directory (`prepared.open_split` reads it).
  """
  images = scan(data_config.image_dir)
  classes = class_names(images, data_config.image_dir) if labelled else None
  root = os.path.abspath(os.path.expanduser(data_config.image_dir))
  settings = {"format": FORMAT, "image_dir": root, "image_size": data_config.image_size,
              "channels": data_config.channels, "eval_fraction": data_config.eval_fraction, "labelled": labelled}
  digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
  for f in images:
    digest.update(f"{f.path}\0{f.size}\0{f.mtime_ns}\n".encode())
  final = os.path.join(prepared.default_root(data_config.data_dir), f"folder-{digest.hexdigest()[:16]}")
  size, channels = data_config.image_size, data_config.channels
  splits = prepared.held_out_splits(images, [f.path for f in images], data_config.eval_fraction,
                                    f"the {len(images)} images of data.image_dir = {data_config.image_dir!r}")
  write = lambda path: prepared.write(
      path, name="folder", reader=FolderReader(root, size, channels, classes), splits=splits,
      shape=(size, size, channels), class_names=classes, num_workers=num_workers,
      source={**settings, "num_files": len(images)})
  return prepared.ensure(final, write)

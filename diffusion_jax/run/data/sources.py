"""The datasets: their registry, the built-in digits as a TFDS builder, and random-access sources: prepared records
(your own images, `folder` and `arrays`, and the standard datasets of `python -m diffusion_jax.prepare`) or TFDS's.

Records are dicts {`x`: uint8 (H, W, C) or float32 points, `label`: int32 when the dataset has labels}.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from collections.abc import Iterator
from typing import Any

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from diffusion_jax.run import logs
from diffusion_jax.run.data import prepared, standard
from diffusion_jax.run.data.arrays import prepare_arrays
from diffusion_jax.run.data.folder import prepare_folder
from diffusion_jax.run.data.records import record
from diffusion_jax.run.data.toys import toy_points

# TFDS warns that a dataset folder it is about to prepare has no dataset_info.json yet.
logs.silence(r"Variant folder .* has no dataset_info\.json")


IMAGE_DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "celeb_a_hq/256", "lsun/church_outdoor",
                  "lsun/bedroom", "lsun/cat", "folder", "arrays")


# Datasets of images of many sizes, read as their central square resized to this size (DDPM's 256x256 models).
CROP_SIZES = {"lsun/church_outdoor": 256, "lsun/bedroom": 256, "lsun/cat": 256}


TOY_DATASETS = ("swiss_roll", "two_moons")


DATASETS = IMAGE_DATASETS + TOY_DATASETS


DIGITS_TEST_SIZE = 297  # of sklearn's 1797 digits; the other 1500 train


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model needs to know about a dataset."""

  name: str
  shape: tuple[int, ...]  # of one example: (H, W, C) or (dim,)
  num_classes: int | None
  is_image: bool
  class_names: tuple[str, ...] | None = None  # class i's name, where the data names its classes
  records: str | None = None  # the directory of prepared records (folder, arrays, `diffusion_jax.prepare`); None: TFDS


class Digits(tfds.core.GeneratorBasedBuilder):
  """sklearn's 1797 handwritten digits, 8x8 grey levels 0..16 rescaled to uint8 0..255.

  A real TFDS dataset (registered as `digits`), prepared locally with no
  download: the images ship inside scikit-learn.
  """

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="sklearn.datasets.load_digits as 8x8x1 uint8 images.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    del dl_manager
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    order = np.random.default_rng(0).permutation(len(images))
    test, train = order[:DIGITS_TEST_SIZE], order[DIGITS_TEST_SIZE:]
    return {"train": self._generate_examples(images[train], digits.target[train], train),
            "test": self._generate_examples(images[test], digits.target[test], test)}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> Iterator[Any]:
    for image, label, i in zip(images, labels, ids):
      yield int(i), {"image": image, "label": int(label)}


def tfds_source(name: str, split: str, data_dir: str | None) -> Any:
  """A random-access TFDS source of `split`, preparing `digits` on first use; a clear error for anything unreadable.

  Args:
    name: a TFDS dataset name of `IMAGE_DATASETS`.
    split: e.g. `train` or `test`.
    data_dir: the TFDS data directory; None for TFDS's default (`~/tensorflow_datasets`,
      or `$TFDS_DATA_DIR`).

  Returns:
    A `tfds.data_source`: `len()` and `[i]` give examples with `image` (and `label`).
  """
  how = (f"prepare it once with: python -c \"import tensorflow_datasets as tfds; "
         f"tfds.builder('{name}', data_dir={data_dir!r}).download_and_prepare(file_format='array_record')\""
         + ("" if name == "digits" else " (this needs network access, and TensorFlow for the download step)"))
  if name in standard.ARCHIVES:
    how = (f"prepare it once, without TensorFlow, with: python -m diffusion_jax.prepare {name}"
           + (f" --data_dir {data_dir}" if data_dir else "") + f"; or {how}")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises its own error types for unknown or broken builders
    raise FileNotFoundError(f"data.dataset = {name!r} could not be opened by TFDS: {e}") from e
  if name == "digits" and not builder.is_prepared():
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    # TFDS prints a banner and progress bars with terminal control characters; one log line says it instead.
    tfds.disable_progress_bar()
    with contextlib.redirect_stdout(io.StringIO()):
      builder.download_and_prepare()
    logging.info("Prepared the built-in digits dataset in %s (from scikit-learn, no download).", builder.data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(f"data.dataset = {name!r} is not prepared in {builder.data_dir!r}; {how}.")
  file_format = builder.info.file_format
  if file_format is None or file_format.value not in ("array_record", "parquet"):
    raise ValueError(
        f"data.dataset = {name!r} in {builder.data_dir!r} is stored as "
        f"{getattr(file_format, 'value', file_format)!r}, which tfds.data_source cannot read "
        f"(it needs random access: array_record or parquet); {how}.")
  if split not in builder.info.splits:
    raise ValueError(f"data split {split!r} is not in {name!r}; it has {sorted(builder.info.splits)}.")
  return builder.as_data_source(split=split)


def check_dataset_name(name: str) -> None:
  if name not in DATASETS:
    raise ValueError(f"Unknown data.dataset {name!r}; allowed: {', '.join(DATASETS)}.")


def records_dir(config: ml_collections.ConfigDict) -> str | None:
  """The prepared records `config.data` reads, preparing a folder or arrays now unless already done; None where
  TFDS's own copy is read (no `python -m diffusion_jax.prepare` copy of the dataset)."""
  dc = config.data
  if dc.dataset == "folder":
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return prepare_folder(dc, config.model.class_conditional, cores or 1)
  if dc.dataset == "arrays":
    return prepare_arrays(dc, config.model.class_conditional)
  path = standard.prepared_path(dc.dataset, dc.data_dir)
  return path if dc.dataset in standard.ARCHIVES and prepared.complete(path) else None


def dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """Shape and classes of `config.data.dataset`, reading (or preparing) the data as needed."""
  name = config.data.dataset
  check_dataset_name(name)
  if name in TOY_DATASETS:
    return DatasetInfo(name, (2,), None, False)
  records = records_dir(config)
  source = prepared.open_split(records, "train") if records else tfds_source(name, "train", config.data.data_dir)
  label = source.dataset_info.features["label"] if "label" in source.dataset_info.features else None
  names = tuple(label.names) if isinstance(label, tfds.features.ClassLabel) else None
  shape = record(source[0], CROP_SIZES.get(name))["x"].shape
  return DatasetInfo(name, shape, None if names is None else len(names), True, names, records)


def image_source(info: DatasetInfo, split: str, data_dir: str | None) -> Any:
  """A random-access source of `split` of `info`'s images: its prepared records, else TFDS's copy.

  Args:
    info: the dataset (`dataset_info`).
    split: e.g. `train` or `test`.
    data_dir: `data.data_dir`, where TFDS's copy lies.

  Returns:
    A source of examples {`image`, `label` if any}: `len()`, `[i]` and `__getitems__`.
  """
  if info.records is None:
    return tfds_source(info.name, split, data_dir)
  if not prepared.complete(info.records):
    raise FileNotFoundError(f"The prepared records of data.dataset = {info.name!r}, {info.records!r}, are gone; "
                            "train again (a folder or arrays are prepared again) or prepare them again.")
  return prepared.open_split(info.records, split)


def image_records(info: DatasetInfo, split: str, data_dir: str | None) -> grain.MapDataset:
  """`image_source` as records {`x`: uint8 (H, W, C), `label`: int32 if any}, cropped per `CROP_SIZES`."""
  crop = CROP_SIZES.get(info.name)
  return grain.MapDataset.source(image_source(info, split, data_dir)).map(lambda e: record(e, crop))


def split_records(config: ml_collections.ConfigDict, info: DatasetInfo, split: str) -> grain.MapDataset:
  if not info.is_image:
    return grain.MapDataset.source(toy_points(info.name, split)).map(lambda p: {"x": p})
  return image_records(info, split, config.data.data_dir)

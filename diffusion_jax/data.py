"""Input pipelines: TFDS `data_source` + grain for images, in-memory 2-D toy distributions.

Every pipeline is a random-access grain `MapDataset` whose element `s` is the
batch of training step `s`: shuffled from the seed, a fresh permutation every
epoch, optional horizontal flips drawn per record from the seed. So the data
position is the step, which the checkpoint holds: a resumed run reads exactly
the batches an uninterrupted run would have. Each host materialises only its
own slice of every global batch, and the global batch does not depend on how
many hosts or devices read it.

Host batches are uint8 images (NHWC) or float32 points; `to_model_input`
scales images to [-1, 1] on the device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import math
import sys
from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from absl import flags, logging
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from tensorflow_datasets.core.data_sources import array_record

from diffusion_jax import logs

# TFDS warns that a dataset folder it is about to prepare has no dataset_info.json yet.
logs.silence(r"Variant folder .* has no dataset_info\.json")

IMAGE_DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "celeb_a_hq/256", "lsun/church_outdoor",
                  "lsun/bedroom", "lsun/cat")
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


def image_source(name: str, split: str, data_dir: str | None) -> Any:
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


def swiss_roll(rng: np.random.Generator, num_points: int) -> np.ndarray:
  """i.i.d. points (t cos t, t sin t) + N(0, 0.5^2 I), t ~ U(1.5 pi, 4.5 pi): sklearn's make_swiss_roll from above.

  Args:
    rng: the source of randomness.
    num_points: how many points.

  Returns:
    float64 array of shape `(num_points, 2)`.
  """
  t = 1.5 * np.pi * (1 + 2 * rng.random(num_points))
  return np.stack([t * np.cos(t), t * np.sin(t)], 1) + 0.5 * rng.standard_normal((num_points, 2))


def two_moons(rng: np.random.Generator, num_points: int) -> np.ndarray:
  """i.i.d. points of sklearn's two moons (noise 0.05): a fair coin picks the moon, the angle is U(0, pi).

  sklearn's `make_moons` places its points at evenly spaced angles instead, a stratified
  sample that sits ~10x closer (in energy distance) to the law than an i.i.d. draw does,
  so no sampler, a perfect model included, could match a fresh draw of it.

  Args:
    rng: the source of randomness.
    num_points: how many points.

  Returns:
    float64 array of shape `(num_points, 2)`.
  """
  angle = np.pi * rng.random(num_points)
  upper = rng.random(num_points) < 0.5
  moon = np.where(upper[:, None], np.stack([np.cos(angle), np.sin(angle)], 1),
                  np.stack([1 - np.cos(angle), 0.5 - np.sin(angle)], 1))
  return moon + 0.05 * rng.standard_normal((num_points, 2))


def toy_points(name: str, split: str, num_points: int = 20_000) -> np.ndarray:
  """A fixed sample of a 2-D toy distribution, standardised by the training sample's mean and std.

  Args:
    name: one of `TOY_DATASETS`.
    split: `train`, or anything else for an independent held-out sample.
    num_points: how many points.

  Returns:
    float32 array of shape `(num_points, 2)`.
  """
  def draw(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (swiss_roll if name == "swiss_roll" else two_moons)(rng, num_points)

  train = draw(0)
  points = train if split == "train" else draw(1)
  return ((points - train.mean(0)) / train.std(0)).astype(np.float32)


def toy_reference(name: str, num_points: int = 2000) -> np.ndarray:
  """Held-out points of a toy distribution, to plot samples against."""
  return toy_points(name, "test")[:num_points]


def check_dataset_name(name: str) -> None:
  if name not in DATASETS:
    raise ValueError(f"Unknown data.dataset {name!r}; allowed: {', '.join(DATASETS)}.")


def dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """Shape and classes of `config.data.dataset`, reading (or preparing) the data as needed."""
  name = config.data.dataset
  check_dataset_name(name)
  if name in TOY_DATASETS:
    return DatasetInfo(name, (2,), None, False)
  source = image_source(name, "train", config.data.data_dir)
  example = source[0]
  num_classes = None
  if "label" in example:
    label = source.dataset_info.features["label"]
    num_classes = label.num_classes if isinstance(label, tfds.features.ClassLabel) else None
  return DatasetInfo(name, _record(example, CROP_SIZES.get(name))["x"].shape, num_classes, True)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The central square of an (H, W, C) uint8 image (its shorter side), resized to (size, size) bicubically.

  Images whose shorter side is already `size` (LSUN's are stored so) are only cropped.
  """
  H, W = image.shape[:2]
  side = min(H, W)
  top, left = (H - side) // 2, (W - side) // 2
  square = image[top:top + side, left:left + side]
  if side == size:
    return np.ascontiguousarray(square)
  resized = PIL.Image.fromarray(square.squeeze(-1) if square.shape[-1] == 1 else square).resize(
      (size, size), PIL.Image.BICUBIC)
  return np.asarray(resized, np.uint8).reshape(size, size, image.shape[-1])


def _record(example: dict[str, Any], crop: int | None = None) -> dict[str, np.ndarray]:
  image = np.asarray(example["image"], np.uint8)
  out = {"x": image if crop is None else center_crop(image, crop)}
  if "label" in example:
    out["label"] = np.asarray(example["label"], np.int32)
  return out


def image_records(name: str, split: str, data_dir: str | None) -> grain.MapDataset:
  """`image_source` as records {`x`: uint8 (H, W, C), `label`: int32 if any}, cropped per `CROP_SIZES`."""
  crop = CROP_SIZES.get(name)
  return grain.MapDataset.source(image_source(name, split, data_dir)).map(lambda e: _record(e, crop))


def _source(config: ml_collections.ConfigDict, split: str) -> grain.MapDataset:
  name = config.data.dataset
  check_dataset_name(name)
  if name in TOY_DATASETS:
    return grain.MapDataset.source(toy_points(name, split)).map(lambda p: {"x": p})
  return image_records(name, split, config.data.data_dir)


def check_batch_divisibility(global_batch_size: int, key: str = "training.global_batch_size") -> int:
  """Raises `ValueError` unless the global batch splits evenly over every device (and so every host)."""
  devices = jax.device_count()
  if global_batch_size % devices:
    raise ValueError(
        f"{key} = {global_batch_size} is not divisible by the number of devices ({devices}); "
        f"use a multiple of {devices}.")
  return global_batch_size // jax.process_count()


def train_batches(config: ml_collections.ConfigDict, *, process_index: int | None = None,
                  process_count: int | None = None) -> grain.MapDataset:
  """Element `c` is this host's share of the global batches of the `k = training.steps_per_call` steps of call `c`.

  Args:
    config: the experiment config.
    process_index, process_count: which host's share; default this process's.

  Returns:
    A `MapDataset` of dicts: `x` of shape `(k, local_batch, *shape)` (uint8 images or
    float32 points) holding steps `c k .. c k + k - 1`, `label` of shape `(k, local_batch)`
    when the dataset has labels.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  check_batch_divisibility(config.training.global_batch_size)
  local = config.training.global_batch_size // process_count
  name = config.data.dataset
  # Each batch reads its records in one call: a fancy index of the toy points, `__getitems__` for images
  # (per-record reads cost ~3x as much), flipping those whose stream position draws a flip.
  if name in TOY_DATASETS:
    source = toy_points(name, "train")
    read = lambda _, indices: {"x": source[indices]}
  else:
    source = image_source(name, "train", config.data.data_dir)
    flip_seed = config.seed + 1 if config.data.get("random_flip", False) else None
    read = functools.partial(_read_batch, _batch_decoder(source, CROP_SIZES.get(name)), flip_seed)
  order = functools.partial(stream_indices, config.seed, len(source))
  ds = grain.MapDataset.range(sys.maxsize).map(lambda b: read(b, order(b * local + np.arange(local))))
  return ds[process_index::process_count].batch(config.training.steps_per_call, drop_remainder=True)


@functools.lru_cache(maxsize=2)
def _permutation(seed: int, num_records: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_records)


def stream_indices(seed: int, num_records: int, positions: np.ndarray) -> np.ndarray:
  """The record at each position of the training stream: epoch `e = p // n` is a permutation of `n` records drawn
  from `(seed, e)`, so a function of the seed and the global position alone (the same on any number of hosts).

  Args:
    seed: the data seed.
    num_records: `n`, the records in one epoch.
    positions: int array of stream positions (any shape).

  Returns:
    int64 record indices in `[0, n)`, the shape of `positions`.
  """
  epoch, within = np.divmod(np.asarray(positions, np.int64), num_records)
  out = np.empty_like(within)
  for e in np.unique(epoch):  # a batch spans at most two epochs
    out[epoch == e] = _permutation(seed, num_records, int(e))[within[epoch == e]]
  return out


def flips(seed: int, positions: np.ndarray) -> np.ndarray:
  """Whether the record at each position of the training stream is mirrored: bit 63 of splitmix64(seed, p).

  A function of the seed and the global position alone, so the same on any number of hosts.
  """
  mask = np.uint64(2**64 - 1)
  with np.errstate(over="ignore"):
    z = (positions.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)) & mask
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
  return (z >> np.uint64(63)).astype(bool)


def _packed_example_class() -> type:
  """A message class for serialized `tf.train.Example`s that reads each `int64_list` as the raw bytes of its packed
  varints: a packed repeated field and a `bytes` field share one wire format, so parsing skips the per-value decoding
  (and Python ints) of TFDS's parser; `_uint8_values` decodes a whole batch at once with NumPy."""
  F = descriptor_pb2.FieldDescriptorProto
  proto = descriptor_pb2.FileDescriptorProto(name="diffusion_jax/packed_example.proto", package="diffusion_jax",
                                             syntax="proto3")
  for name, fields, is_map_entry in [
      ("PackedInt64List", [("value", 1, F.TYPE_BYTES, F.LABEL_OPTIONAL, None)], False),
      ("PackedFeature", [("int64_list", 3, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, "PackedInt64List")], False),
      ("PackedFeatureEntry", [("key", 1, F.TYPE_STRING, F.LABEL_OPTIONAL, None),
                              ("value", 2, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, "PackedFeature")], True),
      ("PackedFeatures", [("feature", 1, F.TYPE_MESSAGE, F.LABEL_REPEATED, "PackedFeatureEntry")], False),
      ("PackedExample", [("features", 1, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, "PackedFeatures")], False)]:
    message = proto.message_type.add(name=name)
    message.options.map_entry = is_map_entry
    for field_name, number, kind, label, type_name in fields:
      field = message.field.add(name=field_name, number=number, type=kind, label=label)
      if type_name:
        field.type_name = f".diffusion_jax.{type_name}"
  pool = descriptor_pool.DescriptorPool()
  pool.Add(proto)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("diffusion_jax.PackedExample"))


_PackedExample = _packed_example_class()


def _stores_int64_tensors(source: Any) -> bool:
  """Whether `source` is array_record whose `image` is a fixed-shape uint8 tensor (and `label` an int64 scalar),
  which TFDS stores as `int64_list`s of `tf.train.Example` protos (encoded images, e.g. PNG, are `bytes`)."""
  if not isinstance(source, array_record.ArrayRecordDataSource):
    return False
  info = source.dataset_info.features.get_serialized_info()
  image, label = info.get("image"), info.get("label")
  static = image is not None and all(isinstance(d, int) for d in image.shape)
  return (static and image.np_dtype == np.uint8 and not image.sequence_rank
          and (label is None or (label.np_dtype == np.int64 and label.shape == ())))


def _uint8_values(packed: bytes) -> np.ndarray:
  """Packed varints of values in [0, 256) -> uint8: a value >= 128 is the two bytes (value, 0x01), so each value
  is the first byte of its varint, and a byte is a first byte when the byte before it is < 128."""
  b = np.frombuffer(packed, np.uint8)
  first = np.empty(len(b), bool)
  first[:1] = True
  np.less(b[:-1], 0x80, out=first[1:])
  return np.compress(first, b)


def _varint(packed: bytes) -> int:
  """The non-negative integer of one varint (little-endian groups of 7 bits)."""
  return sum((byte & 0x7F) << (7 * i) for i, byte in enumerate(packed))


def _parse_int64_tensors(source: Any, shape: tuple[int, ...], keys: list[int]) -> dict[str, np.ndarray]:
  """Records `keys` of a `_stores_int64_tensors` source (images of `shape`) as one batch, parsed straight from the
  protos' packed int64 lists: 128 CIFAR-10-shaped records read and parsed in 3.7 ms, against 8.8 ms through TFDS's
  per-example decoding (BENCHMARKS.md)."""
  features = [_PackedExample.FromString(r).features.feature for r in source.data_source.__getitems__(keys)]
  x = _uint8_values(b"".join([f["image"].int64_list.value for f in features]))
  if x.size != len(keys) * math.prod(shape):
    raise ValueError(f"{len(keys)} records of {source.dataset_info.name!r} (the first: {keys[0]}) hold {x.size} "
                     f"image values, not {len(keys)} x {shape}: not a packed list of uint8 values.")
  out = {"x": x.reshape(len(keys), *shape)}
  if "label" in features[0]:
    out["label"] = np.array([_varint(f["label"].int64_list.value) for f in features], np.int32)
  return out


def _decode_records(source: Any, crop: int | None, keys: list[int]) -> dict[str, np.ndarray]:
  """Records `keys` of `source` as one batch, each decoded by TFDS (and cropped per `crop`)."""
  records = [_record(e, crop) for e in source.__getitems__(keys)]
  return {k: np.stack([r[k] for r in records]) for k in records[0]}


def _batch_decoder(source: Any, crop: int | None) -> Callable[[list[int]], dict[str, np.ndarray]]:
  """`keys -> batch` for `source`, chosen once: parsed from the packed int64 lists where `_stores_int64_tensors`
  holds (and nothing is cropped), else decoded record by record by TFDS (encoded images, e.g. PNG)."""
  if crop is None and _stores_int64_tensors(source):
    shape = tuple(source.dataset_info.features.get_serialized_info()["image"].shape)
    return functools.partial(_parse_int64_tensors, source, shape)
  return functools.partial(_decode_records, source, crop)


def _read_batch(decode: Callable[[list[int]], dict[str, np.ndarray]], flip_seed: int | None, batch_index: int,
                indices: np.ndarray) -> dict[str, np.ndarray]:
  """Local batch `batch_index` of the stream: the records at `indices`, decoded in one call, mirrored where drawn."""
  out = decode([int(i) for i in indices])
  if flip_seed is not None:
    mirrored = flips(flip_seed, batch_index * len(indices) + np.arange(len(indices)))
    out["x"][mirrored] = out["x"][mirrored, :, ::-1]
  return out


def iterate(ds: grain.MapDataset, start: int, num_threads: int = 2, prefetch: int = 4,
            num_workers: int = 0) -> Iterator[Any]:
  """Elements `start, start + 1, ...` of `ds` in order, read ahead by background threads, or by `num_workers`
  worker processes (grain's `mp_prefetch`; the main module must be import-safe, as `main.py` is)."""
  it = ds[start:].to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
  if num_workers:
    if not flags.FLAGS.is_parsed():  # grain reads its absl flags (their defaults) when it starts workers
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    logging.info("Reading batches from %d on with %d worker processes.", start, num_workers)
  return iter(it)


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
  """How many examples `split` of `config.data.dataset` has."""
  return len(_source(config, split))


def eval_batches(config: ml_collections.ConfigDict, split: str, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """One pass over `split` in order, this host's share of each global batch, the last batch padded.

  Yields:
    Dicts like `train_batches`, plus `mask` (float32, 1 for real examples, 0 for padding).
  """
  local = check_batch_divisibility(batch_size, "eval.batch_size")
  ds = _source(config, split)
  n = len(ds)
  num_batches = -(-n // batch_size)
  first = jax.process_index() * local
  for b in range(num_batches):
    idx = np.arange(b * batch_size + first, b * batch_size + first + local)
    records = [ds[int(min(i, n - 1))] for i in idx]
    batch = {k: np.stack([r[k] for r in records]) for k in records[0]}
    batch["mask"] = (idx < n).astype(np.float32)
    yield batch


def to_model_input(x: jax.Array) -> jax.Array:
  """uint8 pixels -> float32 in [-1, 1] (x / 127.5 - 1); float points pass through."""
  if x.dtype == jnp.uint8:
    return x.astype(jnp.float32) / 127.5 - 1.0
  return x.astype(jnp.float32)


def to_uint8(x: jax.Array | np.ndarray) -> np.ndarray:
  """float in [-1, 1] -> uint8 pixels, rounding to the nearest level (NaN, from a diverged model, -> 0)."""
  x = np.nan_to_num(np.asarray(x, np.float32), nan=-1.0)
  return np.asarray(np.clip(np.round((x + 1.0) * 127.5), 0, 255), np.uint8)

"""Prepared datasets: images converted once into array_record files that `tfds.builder_from_directory` reads.

A prepared dataset is a directory of TFDS's own layout (`dataset_info.json`, `features.json`, shards
`NAME-SPLIT.array_record-00000-of-0000N`) whose `image` is a fixed-shape uint8 `Tensor` and `label` a
`ClassLabel`: the records the pipeline parses straight from their bytes (`records.parse_int64_tensors`). They are
written without TensorFlow: each record is a `tf.train.Example` built by `records.encode_record`.

Writing is atomic: every file goes into `FINAL.incomplete-HOST-PID-NONCE`, which is renamed to `FINAL` only when
complete, so a preparation killed at any moment leaves nothing that `complete` accepts (its leftovers are removed
by the next preparation on the same host). The shards are fixed by the items alone (`SHARD_IMAGES` per shard, in
the given order), not by how many worker processes wrote them, so any host writes the same bytes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import math
import multiprocessing
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from array_record.python import array_record_module
from jax.experimental import multihost_utils

from diffusion_jax import files
from diffusion_jax.run.data.records import encode_record
from diffusion_jax.run.logs import Progress

SHARD_IMAGES = 1024  # images per shard at most (fewer where a shard would pass SHARD_BYTES)
SHARD_BYTES = 64 << 20
# Worker processes are started when this process alone would take longer than this for the shards after the first
# (starting one costs ~1.5 s: it imports JAX and TFDS).
PARALLEL_AFTER_S = 5.0
PREPARATION_FILE = "preparation.json"  # what was prepared, from what, and what was skipped


class SkipImage(Exception):
  """An item that cannot be read (an unreadable or truncated image file); its message says why."""


class Reader(Protocol):
  """What a preparation reads: items (file entries, array indices) to images of one shape."""

  def read(self, item: Any) -> tuple[np.ndarray, int | None, bool]:
    """(uint8 image (H, W, C), label or None, whether it was upscaled); `SkipImage` if it cannot be read."""

  def describe(self, item: Any) -> str:
    """The item's name in the log (a file's path)."""


def default_root(data_dir: str | None) -> str:
  """Where prepared datasets live: `DATA_DIR/diffusion_jax`, DATA_DIR being `data.data_dir`, else TFDS's default
  (`$TFDS_DATA_DIR`, else `~/tensorflow_datasets`)."""
  base = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return os.path.join(os.path.abspath(os.path.expanduser(base)), "diffusion_jax")


def features(shape: tuple[int, ...], class_names: Sequence[str] | None) -> tfds.features.FeaturesDict:
  """The TFDS features of a prepared dataset: `image` uint8 of `shape`, and `label` when there are classes."""
  spec = {"image": tfds.features.Tensor(shape=tuple(shape), dtype=np.uint8)}
  if class_names is not None:
    spec["label"] = tfds.features.ClassLabel(names=list(class_names))
  return tfds.features.FeaturesDict(spec)


@dataclasses.dataclass(frozen=True)
class Shard:
  """Items `items` of `split`, written as shard `index` of `count`."""

  split: str
  index: int
  count: int
  items: tuple[Any, ...]


@dataclasses.dataclass
class ShardResult:
  split: str
  index: int
  num_records: int
  num_bytes: int
  skipped: list[str]  # "name: why"
  upscaled: list[str]


def make_shards(splits: dict[str, Sequence[Any]], image_bytes: int) -> list[Shard]:
  """Each split's items in order, cut into shards of `SHARD_IMAGES` (fewer for large images)."""
  per_shard = max(1, min(SHARD_IMAGES, SHARD_BYTES // max(image_bytes, 1)))
  out = []
  for split, items in splits.items():
    count = math.ceil(len(items) / per_shard)
    out += [Shard(split, i, count, tuple(items[i * per_shard:(i + 1) * per_shard])) for i in range(count)]
  return out


def shard_path(directory: str, name: str, shard: Shard) -> str:
  return os.path.join(directory, f"{name}-{shard.split}.array_record-{shard.index:05d}-of-{shard.count:05d}")


def write_shard(reader: Reader, directory: str, name: str, shard: Shard) -> ShardResult:
  """Reads the shard's items and writes those that can be read as one array_record file (in a worker process)."""
  result = ShardResult(shard.split, shard.index, 0, 0, [], [])
  writer = array_record_module.ArrayRecordWriter(shard_path(directory, name, shard), "group_size:1")
  for item in shard.items:
    try:
      image, label, upscaled = reader.read(item)
    except SkipImage as e:
      result.skipped.append(f"{reader.describe(item)}: {e}")
      continue
    record = encode_record(image, label)
    writer.write(record)
    result.num_records += 1
    result.num_bytes += len(record)
    if upscaled:
      result.upscaled.append(reader.describe(item))
  writer.close()
  return result


def _run_shards(reader: Reader, directory: str, name: str, shards: list[Shard], num_workers: int,
                progress: Progress) -> list[ShardResult]:
  """Every shard, reporting progress: the first in this process, the rest in `num_workers` spawned processes where
  the first one's rate says this process alone would take over `PARALLEL_AFTER_S` for them (else here too)."""
  total, start = sum(len(s.items) for s in shards), time.perf_counter()
  progress.start(f"Preparing {name}", total, unit="images")
  results = [write_shard(reader, directory, name, shards[0])]
  done = len(shards[0].items)
  progress.update(done)
  alone_s = (time.perf_counter() - start) / max(done, 1) * (total - done)
  if num_workers < 2 or len(shards) < 3 or alone_s < PARALLEL_AFTER_S:
    for shard in shards[1:]:
      results.append(write_shard(reader, directory, name, shard))
      done += len(shard.items)
      progress.update(done)
    return results
  context = multiprocessing.get_context("spawn")  # this process runs JAX's threads: no fork
  with concurrent.futures.ProcessPoolExecutor(min(num_workers, len(shards) - 1), mp_context=context) as pool:
    pending = {pool.submit(write_shard, reader, directory, name, s): s for s in shards[1:]}
    for future in concurrent.futures.as_completed(pending):
      results.append(future.result())
      done += len(pending[future].items)
      progress.update(done)
  return results


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def _remove_leftovers(final: str) -> None:
  """Removes the directories of killed preparations of `final` on this host (their process is gone)."""
  for path in glob.glob(glob.escape(final) + ".incomplete-*"):
    host, pid, _ = path.rsplit(".incomplete-", 1)[1].rsplit("-", 2)
    if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
      shutil.rmtree(path, ignore_errors=True)


def write(final: str, *, name: str, reader: Reader, splits: dict[str, Sequence[Any]], shape: tuple[int, ...],
          class_names: Sequence[str] | None, num_workers: int, source: dict[str, Any]) -> None:
  """Prepares `splits` (split -> items of `reader`) into the directory `final`, atomically.

  Args:
    final: the prepared dataset's directory; it appears complete or not at all.
    name: the dataset's name in its files.
    reader: reads each item to an image of `shape` (and its label).
    splits: items per split, in record order; a split whose items all fail to read is left out.
    shape: (H, W, C) of every image.
    class_names: the label of class i is `class_names[i]`; None for unlabelled data.
    num_workers: worker processes (0: this process).
    source: what the data was prepared from and how, written to `preparation.json`.

  Raises:
    ValueError: no item of the train split could be read.
  """
  _remove_leftovers(final)
  tmp = f"{final}.incomplete-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  os.makedirs(tmp)
  shards = make_shards(splits, math.prod(shape))
  results = _run_shards(reader, tmp, name, shards, num_workers, Progress())
  skipped = [s for r in sorted(results, key=lambda r: (r.split, r.index)) for s in r.skipped]
  upscaled = sum(len(r.upscaled) for r in results)
  if skipped:
    logging.warning("Skipped %d unreadable images of %s; the first: %s", len(skipped), name, "; ".join(skipped[:5]))
  if upscaled:
    logging.warning("Upscaled %d images of %s smaller than %dx%d.", upscaled, name, shape[0], shape[1])
  split_infos = []
  for split in splits:
    mine = sorted((r for r in results if r.split == split), key=lambda r: r.index)
    if sum(r.num_records for r in mine) == 0:
      for shard in (s for s in shards if s.split == split):
        os.remove(shard_path(tmp, name, shard))
      continue
    split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[r.num_records for r in mine],
                                           num_bytes=sum(r.num_bytes for r in mine)))
  if "train" not in [s.name for s in split_infos]:
    shutil.rmtree(tmp)
    raise ValueError(f"No image of {name} could be read ({len(skipped)} unreadable); the first: "
                     f"{'; '.join(skipped[:5])}.")
  tfds.folder_dataset.write_metadata(data_dir=tmp, features=features(shape, class_names), split_infos=split_infos,
                                     description=f"Prepared by diffusion_jax from {source}.", check_data=False)
  files.write_json(os.path.join(tmp, PREPARATION_FILE), {
      "source": source, "records": {s.name: s.num_examples for s in split_infos},
      "skipped": skipped, "upscaled": upscaled})
  try:
    os.rename(tmp, final)
  except OSError:  # another process finished first: its records are the same
    shutil.rmtree(tmp, ignore_errors=True)
  logging.info("Prepared %s in %s: %s.", name, final,
               ", ".join(f"{s.num_examples} {s.name} records" for s in split_infos))


def complete(final: str) -> bool:
  """Whether `final` is a finished preparation (only a finished one is ever renamed to it)."""
  return os.path.isfile(os.path.join(final, "dataset_info.json"))


def ensure(final: str, prepare: Callable[[str], None]) -> str:
  """`final`, prepared by `prepare(final)` unless complete. With several processes, process 0 prepares while the
  others wait; a process that then still finds nothing (its file system is not process 0's) prepares its own."""
  if complete(final):
    return final
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      prepare(final)
    multihost_utils.sync_global_devices(f"prepared {os.path.basename(final)}")
    if complete(final):
      return final
  prepare(final)
  return final


def open_split(path: str, split: str) -> Any:
  """A random-access source of `split` of the prepared dataset at `path` (`len`, `[i]`, `__getitems__`)."""
  builder = tfds.builder_from_directory(path)
  if split not in builder.info.splits:
    raise ValueError(f"The prepared data in {path!r} has no split {split!r}; it has {sorted(builder.info.splits)} "
                     "(a folder or arrays hold out data.eval_fraction of their images as 'test').")
  return builder.as_data_source(split=split)

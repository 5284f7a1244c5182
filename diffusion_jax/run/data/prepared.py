"""Prepared datasets: images converted once into array_record files that `tfds.builder_from_directory` reads.

A prepared dataset is a directory of TFDS's own layout (`dataset_info.json`, `features.json`, shards
`NAME-SPLIT.array_record-00000-of-0000N`) whose `image` is a fixed-shape uint8 `Tensor` and `label` a
`ClassLabel`: the records the pipeline parses straight from their bytes (`records.parse_int64_tensors`). They are
written without TensorFlow: each record is a `tf.train.Example` built by `records.encode_record`.

Writing is atomic: every file goes into `FINAL.incomplete-HOST-PID-NONCE`, which is renamed to `FINAL` only when
complete, so a preparation killed at any moment leaves nothing that `complete` accepts (its leftovers are removed
by the next preparation on the same host). Worker processes encode chunks of items and this process writes them in
order; the shards are fixed by the items alone (`make_chunks`), not by how many workers encoded them, so any host
writes the same bytes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import hashlib
import itertools
import math
import multiprocessing
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
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

CHUNK_IMAGES = 256  # items per unit of work (of a worker process)
SHARD_BYTES = 256 << 20  # pixels per shard file, about: few large files read faster than many small ones
# One record per group (random access), uncompressed: zstd (the default) would take 2.4 ms of a 256x256 record's
# ~3.4 ms, in the process that writes, to save a third of the disk (BENCHMARKS.md).
WRITER_OPTIONS = "group_size:1,uncompressed"
# Worker processes are started when this process alone would take longer than this for the chunks after the first
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
class Chunk:
  """Items `items` of `split`, whose records go into shard `shard` of `num_shards` (after its earlier chunks)."""

  split: str
  shard: int
  num_shards: int
  items: tuple[Any, ...]


@dataclasses.dataclass
class ChunkResult:
  records: list[bytes]  # of the items that could be read, in order
  skipped: list[str]  # "name: why"
  upscaled: int


def held_out(key: str, eval_fraction: float) -> bool:
  """Whether the item named `key` is in the held-out split: the first 8 bytes of SHA-256(key), as a fraction of
  2^64, fall below `eval_fraction`."""
  u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64
  return u < eval_fraction


def held_out_splits(items: Sequence[Any], keys: Sequence[str], eval_fraction: float,
                    what: str) -> dict[str, list[Any]]:
  """{'train': items kept, 'test': items `held_out` by their key}, in order; `ValueError` if nothing is kept."""
  test = [held_out(k, eval_fraction) for k in keys]
  splits = {"train": [i for i, t in zip(items, test) if not t], "test": [i for i, t in zip(items, test) if t]}
  if not splits["train"]:
    raise ValueError(f"data.eval_fraction = {eval_fraction} holds out all {what}; lower it.")
  return splits


def make_chunks(splits: dict[str, Sequence[Any]], image_bytes: int) -> list[Chunk]:
  """Each split's items in order, in chunks of `CHUNK_IMAGES`, whole chunks to a shard of about `SHARD_BYTES`:
  fixed by the items alone, so any number of workers writes the same files."""
  per_shard = max(1, SHARD_BYTES // (CHUNK_IMAGES * max(image_bytes, 1))) * CHUNK_IMAGES
  out = []
  for split, items in splits.items():
    num_shards = math.ceil(len(items) / per_shard)
    out += [Chunk(split, start // per_shard, num_shards, tuple(items[start:start + CHUNK_IMAGES]))
            for start in range(0, len(items), CHUNK_IMAGES)]
  return out


def shard_path(directory: str, name: str, split: str, shard: int, num_shards: int) -> str:
  return os.path.join(directory, f"{name}-{split}.array_record-{shard:05d}-of-{num_shards:05d}")


def encode_chunk(reader: Reader, chunk: Chunk) -> ChunkResult:
  """The records of the chunk's items that can be read (in a worker process, or this one)."""
  result = ChunkResult([], [], 0)
  for item in chunk.items:
    try:
      image, label, upscaled = reader.read(item)
    except SkipImage as e:
      result.skipped.append(f"{reader.describe(item)}: {e}")
      continue
    result.records.append(encode_record(image, label))
    result.upscaled += upscaled
  return result


def _encoded(reader: Reader, chunks: list[Chunk], num_workers: int) -> Iterator[ChunkResult]:
  """`encode_chunk` of every chunk, in order: the first here, the rest in `num_workers` spawned processes where the
  first one's rate says this process alone would take over `PARALLEL_AFTER_S` for them (else here too)."""
  start = time.perf_counter()
  yield encode_chunk(reader, chunks[0])
  alone_s = (time.perf_counter() - start) / len(chunks[0].items) * sum(len(c.items) for c in chunks[1:])
  if num_workers < 2 or len(chunks) < 3 or alone_s < PARALLEL_AFTER_S:
    yield from (encode_chunk(reader, c) for c in chunks[1:])
    return
  context = multiprocessing.get_context("spawn")  # this process runs JAX's threads: no fork
  with concurrent.futures.ProcessPoolExecutor(min(num_workers, len(chunks) - 1), mp_context=context) as pool:
    yield from pool.map(encode_chunk, itertools.repeat(reader), chunks[1:])


def _write_chunks(reader: Reader, directory: str, name: str, chunks: list[Chunk], num_workers: int,
                  progress: Progress) -> tuple[dict[str, list[int]], dict[str, int], list[str], int]:
  """Writes the records of `chunks` into their shards, in order, with a progress line.

  Returns:
    (split -> records per shard, split -> bytes, the skipped items, how many were upscaled).
  """
  progress.start(f"Preparing {name}", sum(len(c.items) for c in chunks), unit="images")
  lengths, sizes, skipped, upscaled, done = {}, {}, [], 0, 0
  writer, current = None, None
  for chunk, result in zip(chunks, _encoded(reader, chunks, num_workers)):
    if (chunk.split, chunk.shard) != current:
      if writer is not None:
        writer.close()
      current = (chunk.split, chunk.shard)
      writer = array_record_module.ArrayRecordWriter(
          shard_path(directory, name, chunk.split, chunk.shard, chunk.num_shards), WRITER_OPTIONS)
      lengths.setdefault(chunk.split, []).append(0)
    for record in result.records:
      writer.write(record)
    lengths[chunk.split][-1] += len(result.records)
    sizes[chunk.split] = sizes.get(chunk.split, 0) + sum(map(len, result.records))
    skipped += result.skipped
    upscaled += result.upscaled
    done += len(chunk.items)
    progress.update(done)
  writer.close()
  return lengths, sizes, skipped, upscaled


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
  try:
    split_infos = _write_all(tmp, name=name, reader=reader, splits=splits, shape=shape, class_names=class_names,
                             num_workers=num_workers, source=source)
    for entry in os.scandir(tmp):  # on disk before the rename makes them visible, also after a power loss
      with open(entry.path, "rb") as f:
        os.fsync(f.fileno())
    files.fsync_dir(tmp)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  try:
    os.rename(tmp, final)
  except OSError:  # another process finished first: its records are the same
    shutil.rmtree(tmp, ignore_errors=True)
  files.fsync_dir(os.path.dirname(final))
  logging.info("Prepared %s in %s: %s.", name, final,
               ", ".join(f"{s.num_examples} {s.name} records" for s in split_infos))


def _write_all(tmp: str, *, name: str, reader: Reader, splits: dict[str, Sequence[Any]], shape: tuple[int, ...],
               class_names: Sequence[str] | None, num_workers: int,
               source: dict[str, Any]) -> list[tfds.core.SplitInfo]:
  """`write`'s files, into `tmp`; returns the splits written."""
  lengths, sizes, skipped, upscaled = _write_chunks(reader, tmp, name, make_chunks(splits, math.prod(shape)),
                                                    num_workers, Progress())
  if skipped:
    logging.warning("Skipped %d unreadable images of %s; the first: %s", len(skipped), name, "; ".join(skipped[:5]))
  if upscaled:
    logging.warning("Upscaled %d images of %s smaller than %dx%d.", upscaled, name, shape[0], shape[1])
  split_infos = []
  for split, shard_lengths in lengths.items():
    if sum(shard_lengths) == 0:  # every item of the split was unreadable
      for shard in range(len(shard_lengths)):
        os.remove(shard_path(tmp, name, split, shard, len(shard_lengths)))
      continue
    split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=shard_lengths, num_bytes=sizes[split]))
  if "train" not in [s.name for s in split_infos]:
    raise ValueError(f"No image of {name} could be read ({len(skipped)} unreadable); the first: "
                     f"{'; '.join(skipped[:5])}.")
  tfds.folder_dataset.write_metadata(data_dir=tmp, features=features(shape, class_names), split_infos=split_infos,
                                     description=f"Prepared by diffusion_jax from {source}.", check_data=False)
  files.write_json(os.path.join(tmp, PREPARATION_FILE), {
      "source": source, "records": {s.name: s.num_examples for s in split_infos},
      "skipped": skipped, "upscaled": upscaled})
  return split_infos


def complete(final: str) -> bool:
  """Whether `final` is a finished preparation (only a finished one is ever renamed to it)."""
  return os.path.isfile(os.path.join(final, "dataset_info.json"))


def ensure(final: str, prepare: Callable[[str], None]) -> str:
  """`final`, prepared by `prepare(final)` unless complete. With several processes, process 0 prepares while the
  others wait; a process that then still finds nothing (its file system is not process 0's) prepares its own."""
  if complete(final):
    return final
  if jax.distributed.is_initialized() and jax.process_count() > 1:  # (no backend started for a single process)
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

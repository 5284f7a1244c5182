"""The training stream and the evaluation pass, as random-access grain datasets.

Element `s` of the training stream is the batch of training step `s`: shuffled from the seed, a fresh
permutation every epoch, optional horizontal flips drawn per record from the seed. So the data position is
the step, which the checkpoint holds: a resumed run reads exactly the batches an uninterrupted run would
have. Each host materialises only its own slice of every global batch, and the global batch does not depend
on how many hosts or devices read it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import flags, logging

from diffusion_jax.run.data.records import batch_decoder
from diffusion_jax.run.data.sources import CROP_SIZES, DatasetInfo, image_source, split_records
from diffusion_jax.run.data.toys import toy_points


def check_batch_divisibility(global_batch_size: int, key: str = "training.global_batch_size") -> int:
  """Raises `ValueError` unless the global batch splits evenly over every device (and so every host)."""
  devices = jax.device_count()
  if global_batch_size % devices:
    raise ValueError(
        f"{key} = {global_batch_size} is not divisible by the number of devices ({devices}); "
        f"use a multiple of {devices}.")
  return global_batch_size // jax.process_count()


def train_batches(config: ml_collections.ConfigDict, info: DatasetInfo, *, process_index: int | None = None,
                  process_count: int | None = None) -> grain.MapDataset:
  """Element `c` is this host's share of the global batches of the `k = training.steps_per_call` steps of call `c`.

  Args:
    config: the experiment config.
    info: its dataset (`dataset_info`).
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
  name = info.name
  # Each batch reads its records in one call: a fancy index of the toy points, `__getitems__` for images
  # (per-record reads cost several times as much), flipping those whose stream position draws a flip.
  if not info.is_image:
    source = toy_points(name, "train")
    read = lambda _, indices: {"x": source[indices]}
  else:
    source = image_source(info, "train", config.data.data_dir)
    flip_seed = config.seed + 1 if config.data.get("random_flip", False) else None
    read = functools.partial(read_batch, batch_decoder(source, CROP_SIZES.get(name)), flip_seed)
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


def read_batch(decode: Callable[[list[int]], dict[str, np.ndarray]], flip_seed: int | None, batch_index: int,
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


def num_examples(config: ml_collections.ConfigDict, info: DatasetInfo, split: str) -> int:
  """How many examples `split` of the dataset `info` has."""
  return len(split_records(config, info, split))


def eval_batches(config: ml_collections.ConfigDict, info: DatasetInfo, split: str,
                 batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """One pass over `split` in order, this host's share of each global batch, the last batch padded.

  Yields:
    Dicts like `train_batches`, plus `mask` (float32, 1 for real examples, 0 for padding).
  """
  local = check_batch_divisibility(batch_size, "eval.batch_size")
  ds = split_records(config, info, split)
  n = len(ds)
  num_batches = -(-n // batch_size)
  first = jax.process_index() * local
  for b in range(num_batches):
    idx = np.arange(b * batch_size + first, b * batch_size + first + local)
    records = [ds[int(min(i, n - 1))] for i in idx]
    batch = {k: np.stack([r[k] for r in records]) for k in records[0]}
    batch["mask"] = (idx < n).astype(np.float32)
    yield batch

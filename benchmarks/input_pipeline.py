"""The input pipeline alone: images/s of `data.train_batches` on a CIFAR-10-shaped array_record dataset.

    python benchmarks/input_pipeline.py [--records 50000] [--batch 128] [--workers 0,1,2] [--seconds 5]
        [--data_dir /tmp/random_cifar10] [--out benchmarks/results/input_pipeline.json]

Writes (once, into `--data_dir`) a TFDS dataset of `--records` random 32x32x3 uint8 images with labels, stored
as array_record, as `tfds.data_source` reads it; then reads training batches of `--batch` with random flips
exactly as `main.py` does (`data.train_batches`: shuffled, flipped per record, batched; `data.iterate`: grain's
read threads and prefetch, or `--workers` worker processes, `data.num_workers`) for `--seconds` per setting.
Also times the loop's host work per step from the host batch to a device array sharded over the mesh
(`parallel.global_batch`), which the step's dispatch follows.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from typing import Any

import tensorflow_datasets as tfds

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from random_cifar10 import NAME, RandomCifar10, register  # noqa: E402

import common  # noqa: E402
from configs import default  # noqa: E402
from diffusion_jax.run import data, parallel  # noqa: E402


def prepare(data_dir: str, records: int) -> None:
  builder = RandomCifar10(data_dir=data_dir, file_format="array_record")
  if builder.is_prepared() and builder.info.splits["train"].num_examples == records:
    return
  RandomCifar10.num_records = records
  tfds.disable_progress_bar()
  start = time.time()
  with contextlib.redirect_stdout(io.StringIO()):
    builder.download_and_prepare()
  print(f"wrote {records} records to {data_dir} in {time.time() - start:.0f} s", flush=True)


def read_rate(config: Any, workers: int, prefetch: int, seconds: float) -> tuple[float, int]:
  """Images/s of `data.iterate(data.train_batches(config))` after a warm-up batch, and the batches read."""
  it = data.iterate(data.train_batches(config, data.dataset_info(config)), 0, num_threads=1, prefetch=prefetch,
                    num_workers=workers)
  next(it)
  batches, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    batch = next(it)
    batches += 1
  elapsed = time.perf_counter() - start
  return batches * batch["x"].shape[0] * batch["x"].shape[1] / elapsed, batches


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--records", type=int, default=50_000)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--workers", default="0,1,2", help="worker processes (0: one read thread)")
  parser.add_argument("--prefetch", type=int, default=4)
  parser.add_argument("--seconds", type=float, default=5.0)
  parser.add_argument("--data_dir", default=os.path.join("/tmp", NAME))
  parser.add_argument("--out", default="benchmarks/results/input_pipeline.json")
  args = common.parse_args(parser)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  register()
  prepare(args.data_dir, args.records)
  config = default.get_config()
  config.data.update(dataset=NAME, data_dir=args.data_dir, random_flip=True)
  config.training.global_batch_size = args.batch
  rows = []
  for workers in [int(w) for w in args.workers.split(",")]:
    rate, batches = read_rate(config, workers, args.prefetch, args.seconds)
    how = f"{workers} worker processes" if workers else "1 read thread"
    rows.append({"what": f"data.train_batches + data.iterate ({how}, prefetch {args.prefetch})",
                 "images_per_s": rate, "batches": batches, "ms_per_batch": 1e3 * args.batch / rate})
    print(rows[-1], flush=True)
  mesh = parallel.make_mesh()
  batch = next(data.iterate(data.train_batches(config, data.dataset_info(config)), 0))
  place = lambda: parallel.global_batch(batch, mesh, leading_axes=1)
  seconds = common.time_call(place, repeats=5, min_seconds=0.5)
  rows.append({"what": "host batch -> sharded device array (parallel.global_batch)",
               "images_per_s": args.batch / seconds, "batches": "", "ms_per_batch": 1e3 * seconds})
  common.report(f"Input pipeline: {args.records} CIFAR-10-shaped records, batches of {args.batch} with flips "
                f"({common.cpu_description()})", rows, ["what", "images_per_s", "ms_per_batch", "batches"],
                args.out)


if __name__ == "__main__":  # the guard grain's worker processes need
  main()

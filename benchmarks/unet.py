"""UNet forward and forward+backward throughput, XLA FLOPs per image, achieved GFLOP/s.

    python benchmarks/unet.py [--sizes cpu,cifar10] [--dtype float32] [--out benchmarks/results/unet.json]

`cpu` is ch 64, ch_mult (1, 2, 2, 2), 2 res blocks, attention at 16, 32x32x3,
batch 16; `cifar10` is the paper's 35.7M-parameter model at the same batch.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402
from diffusion_jax.models.unet import UNet  # noqa: E402

SIZES = {
    "cpu": dict(ch=64, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1),
    "cifar10": dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1),
}


def bench(name: str, batch: int, dtype: jnp.dtype, matmul: float) -> list[dict]:
  model = UNet(**SIZES[name], dtype=dtype)
  x = jax.random.normal(jax.random.key(0), (batch, 32, 32, 3))
  t = jnp.arange(batch) * 7 % 1000
  params = common.jit(model.init)(jax.random.key(1), x, t)
  rngs = {"dropout": jax.random.key(2)}
  n_params = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
  forward = common.jit(lambda p, x: model.apply(p, x, t))
  backward = common.jit(jax.grad(lambda p, x: jnp.mean(jnp.square(model.apply(p, x, t, train=True, rngs=rngs)))))
  rows = []
  for label, fn in [("forward", forward), ("forward+backward", backward)]:
    compiled, compile_s, flops = common.compile_seconds_and_flops(fn, params, x)
    seconds = common.time_call(lambda: compiled(params, x))
    rows.append({
        "model": name, "params": n_params, "batch": batch, "dtype": jnp.dtype(dtype).name, "pass": label,
        "images_per_s": batch / seconds, "gflop_per_image": flops / batch / 1e9,
        "gflop_per_s": flops / seconds / 1e9, "fraction_of_matmul": flops / seconds / 1e9 / matmul,
        "compile_s": compile_s,
    })
    print(rows[-1], flush=True)
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", default="cpu,cifar10")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--out", default="benchmarks/results/unet.json")
  args = common.parse_args(parser)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  matmul = common.matmul_gflops()
  print(f"float32 matmul rate: {matmul:.1f} GFLOP/s", flush=True)
  rows = [r for name in args.sizes.split(",") for r in bench(name, args.batch, jnp.dtype(args.dtype), matmul)]
  common.report(
      f"UNet throughput ({jax.devices()[0].device_kind}, float32 matmul {matmul:.0f} GFLOP/s)", rows,
      ["model", "params", "batch", "dtype", "pass", "images_per_s", "gflop_per_image", "gflop_per_s",
       "fraction_of_matmul", "compile_s"], args.out, {"matmul_gflops": matmul})


if __name__ == "__main__":
  main()

"""The UNet's dominant kernel alone: a 3x3 conv, 64 channels, 32x32, batch 16 (the CPU workload's top level).

    python benchmarks/conv.py [--out benchmarks/results/conv.json]

Forward, weight gradient and data gradient as XLA compiles them, and the weight
gradient as one im2col matmul (patches^T @ dy), against the float32 matmul rate.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402

DN = ("NHWC", "HWIO", "NHWC")


def conv(x: jax.Array, w: jax.Array) -> jax.Array:
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)


def weight_grad_im2col(x: jax.Array, dy: jax.Array) -> jax.Array:
  C, O = x.shape[-1], dy.shape[-1]  # noqa: E741 (the kernel's input and output channels)
  patches = jax.lax.conv_general_dilated_patches(x, (3, 3), (1, 1), "SAME", dimension_numbers=DN)
  return jnp.einsum("bhwk,bhwo->ko", patches, dy).reshape(C, 3, 3, O).transpose(1, 2, 0, 3)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--channels", type=int, default=64)
  parser.add_argument("--out", default="benchmarks/results/conv.json")
  args = common.parse_args(parser)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  B, H, C = args.batch, args.size, args.channels
  x = jax.random.normal(jax.random.key(0), (B, H, H, C))
  w = 0.05 * jax.random.normal(jax.random.key(1), (3, 3, C, C))
  dy = jax.random.normal(jax.random.key(2), (B, H, H, C))
  flops = 2 * B * H * H * C * C * 9
  matmul = common.matmul_gflops()
  kernels = {
      "forward": (common.jit(conv), (x, w)),
      "weight_grad (XLA)": (common.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]), (x, w, dy)),
      "weight_grad (im2col matmul)": (common.jit(lambda x, w, dy: weight_grad_im2col(x, dy)), (x, w, dy)),
      "data_grad (XLA)": (common.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0]), (x, w, dy)),
  }
  rows = []
  for name, (fn, a) in kernels.items():
    seconds = common.time_call(lambda: fn(*a))
    rows.append({"kernel": name, "ms": seconds * 1e3, "gflop_per_s": flops / seconds / 1e9,
                 "fraction_of_matmul": flops / seconds / 1e9 / matmul})
  common.report(f"3x3 conv {C}->{C} at {H}x{H}, batch {B} (float32 matmul {matmul:.0f} GFLOP/s)", rows,
                ["kernel", "ms", "gflop_per_s", "fraction_of_matmul"], args.out, {"matmul_gflops": matmul})


if __name__ == "__main__":
  main()

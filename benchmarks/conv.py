"""The UNet's dominant kernel alone: 3x3 convolutions, forward, weight gradient and data gradient, ours (XLA) and
optionally PyTorch's (oneDNN) in the same run.

    python benchmarks/conv.py [--shapes 16x32x64,16x16x128] [--dtype float32,bfloat16] [--peer]
        [--out benchmarks/results/conv.json]

A shape `BxSxC` is a batch of B images of SxS pixels, C channels in and out (16x32x64 is the CPU workload's
top level, 128x32x128 the paper's). Ours: `lax.conv_general_dilated` in NHWC/HWIO as the UNet calls it, and
its VJPs, as XLA compiles them; the weight gradient also as one im2col matmul (patches^T @ dy). `--peer`:
`torch.nn.functional.conv2d` in channels-last and `aten.convolution_backward`, bfloat16 tensors for bfloat16
(what CPU autocast hands oneDNN). GFLOP/s against the float32 matmul rate.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

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


def ours(B: int, S: int, C: int, dtype: str) -> dict[str, Callable[[], Any]]:
  """The kernels as XLA compiles them, each a no-argument call."""
  x = jax.random.normal(jax.random.key(0), (B, S, S, C), dtype)
  w = (0.05 * jax.random.normal(jax.random.key(1), (3, 3, C, C))).astype(dtype)
  dy = jax.random.normal(jax.random.key(2), (B, S, S, C), dtype)
  fns = {
      "forward": (common.jit(conv), (x, w)),
      "weight_grad": (common.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]), (x, w, dy)),
      "weight_grad (im2col matmul)": (common.jit(lambda x, w, dy: weight_grad_im2col(x, dy)), (x, w, dy)),
      "data_grad": (common.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0]), (x, w, dy)),
  }
  return {name: (lambda fn=fn, a=a: fn(*a)) for name, (fn, a) in fns.items()}


def peer(B: int, S: int, C: int, dtype: str) -> dict[str, Callable[[], Any]]:
  """The same kernels through PyTorch's CPU convolutions (oneDNN), channels-last."""
  import torch

  torch.set_num_threads(os.cpu_count() or 1)
  dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  make = lambda *shape: torch.randn(*shape).to(dt)
  x = make(B, C, S, S).contiguous(memory_format=torch.channels_last)
  dy = make(B, C, S, S).contiguous(memory_format=torch.channels_last)
  w = (0.05 * make(C, C, 3, 3)).contiguous(memory_format=torch.channels_last)
  backward = lambda mask: torch.ops.aten.convolution_backward(dy, x, w, None, [1, 1], [1, 1], [1, 1], False,
                                                              [0, 0], 1, mask)
  return {"forward": lambda: torch.nn.functional.conv2d(x, w, padding=1),
          "weight_grad": lambda: backward([False, True, False]),
          "data_grad": lambda: backward([True, False, False])}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shapes", default="16x32x64", help="comma-separated BxSxC")
  parser.add_argument("--dtype", default="float32", help="comma-separated: float32,bfloat16")
  parser.add_argument("--peer", action="store_true", help="also time PyTorch's convolutions (the [bench] extra)")
  parser.add_argument("--out", default="benchmarks/results/conv.json")
  args = common.parse_args(parser)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  matmul = common.matmul_gflops()
  rows = []
  for shape in args.shapes.split(","):
    B, S, C = (int(v) for v in shape.split("x"))
    flops = 2 * B * S * S * C * C * 9
    for dtype in args.dtype.split(","):
      sides = [("XLA", ours(B, S, C, dtype))] + ([("PyTorch", peer(B, S, C, dtype))] if args.peer else [])
      for impl, kernels in sides:
        for name, fn in kernels.items():
          seconds = common.time_call(fn)
          rows.append({"shape": shape, "dtype": dtype, "impl": impl, "kernel": name, "ms": seconds * 1e3,
                       "gflop_per_s": flops / seconds / 1e9, "fraction_of_matmul": flops / seconds / 1e9 / matmul})
          print(rows[-1], flush=True)
  common.report(f"3x3 convolutions, C -> C channels ({common.cpu_description()}; float32 matmul {matmul:.0f} "
                f"GFLOP/s)", rows, ["shape", "dtype", "impl", "kernel", "ms", "gflop_per_s", "fraction_of_matmul"],
                args.out, {"matmul_gflops": matmul})


if __name__ == "__main__":
  main()

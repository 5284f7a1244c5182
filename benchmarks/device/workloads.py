"""The timed workloads of the accelerator check (`check.py`): training, sampling and FID features, ours and torch's.

Each `*_rows` function measures one stage and hands every row to `emit` as soon as it is measured, so a stage cut
short by its time limit keeps what it finished. `size` is `paper` (the DDPM CIFAR-10 model, 35,746,307 parameters,
32x32x3) or `toy` (a small UNet at 16x16 that compiles in seconds on a CPU: the dry run).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import common  # noqa: E402
import train_throughput  # noqa: E402
from diffusion_jax.metrics import inception  # noqa: E402
from diffusion_jax.run import experiment, sampler  # noqa: E402

Emit = Callable[[dict[str, Any]], None]

# What each size measures: the compute dtypes, training batches (`timed_steps` steps each), the ancestral chain (T
# steps of `ancestral_images`), the few-step solver (`solver_steps` DPM-Solver++ steps of `solver_images` in calls of
# `solver_batch`) and the Inception features. The toy size runs each code path once: one dtype, one batch.
SIZES = {
    "paper": dict(workload="paper", dtypes=("bfloat16", "float32"), train_batches=(128, 512), timed_steps=20,
                  ancestral_images=256, solver_images=10_000, solver_batch=2500, solver_steps=20,
                  inception_images=2000, inception_batch=500, matmul_n=8192),
    "toy": dict(workload="toy", dtypes=("bfloat16",), train_batches=(4,), timed_steps=2, ancestral_images=4,
                solver_images=16, solver_batch=8, solver_steps=20, inception_images=4, inception_batch=4,
                matmul_n=256),
}


def seconds_per_call(fn: Callable[[], Any], calls: int, sync: Callable[[Any], Any]) -> float:
  """Mean wall seconds of `calls` calls of `fn` issued back to back, after one warm-up call; `sync(result)` waits for
  the device to finish."""
  sync(fn())
  start = time.perf_counter()
  for _ in range(calls):
    out = fn()
  sync(out)
  return (time.perf_counter() - start) / calls


def jax_train_rows(size: str, emit: Emit) -> None:
  """Our jitted train step (`step.train_step`: Adam, EMA, clipping) per dtype and batch of `SIZES[size]`."""
  s = SIZES[size]
  for dtype in s["dtypes"]:
    for batch in s["train_batches"]:
      p = train_throughput.prepare(s["workload"], batch, dtype, 1)
      step_s = seconds_per_call(p["run"], s["timed_steps"], common.block)
      emit({"stage": "train", "impl": "diffusion_jax", "mode": "jit", "dtype": dtype, "batch": batch,
            "params": p["params"], "images_per_s": batch / step_s, "step_s": step_s, "flops_per_step": p["flops"],
            "compile_s": p["compile_s"], "peak_bytes": p["peak_bytes"]})


def torch_train_rows(size: str, modes: list[str], emit: Emit) -> None:
  """diffusers' UNet2DModel of the same layout, Adam and the eps-MSE (`peers.torch_side`), eager and/or
  `torch.compile`d, per dtype (bfloat16: autocast) and batch of `SIZES[size]`."""
  import torch

  import peers
  s = SIZES[size]
  device = "cuda" if torch.cuda.is_available() else "cpu"
  sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)
  for mode in modes:
    for dtype in s["dtypes"]:
      for batch in s["train_batches"]:
        if device == "cuda":
          torch.cuda.reset_peak_memory_stats()
        compile_mode = None if mode == "eager" else mode
        start = time.perf_counter()
        side = peers.torch_side(train_throughput.WORKLOADS[s["workload"]], batch, 1, dtype, device=device,
                                compile_mode=compile_mode)
        sync(side["train"]())  # the first call compiles under torch.compile
        first_s = time.perf_counter() - start
        step_s = seconds_per_call(side["train"], s["timed_steps"], sync)
        emit({"stage": "train", "impl": side["name"], "mode": "torch.compile" if compile_mode else "eager",
              "compile_mode": compile_mode, "dtype": dtype, "batch": batch,
              "params": side["params"], "images_per_s": batch / step_s, "step_s": step_s,
              "compile_s": first_s if compile_mode else None,
              "peak_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None})
        del side


def _experiment(size: str, dtype: str, **sampling: Any) -> experiment.Experiment:
  """The workload's model as a library experiment (T = 1000, linear betas) sampling per `sampling`."""
  s = SIZES[size]
  c = train_throughput.workload_config(s["workload"], None, dtype, 1)
  c.model.dropout = 0.0
  for k, v in sampling.items():
    c.sampling[k] = v
  return experiment.build(c, info=train_throughput.dataset_info(s["workload"]))


def sampling_rows(size: str, emit: Emit) -> None:
  """1000-step ancestral sampling and 20-step DPM-Solver++ through the library's `Sampler` (`--mode sample`'s path),
  random parameters of the workload's model."""
  s = SIZES[size]
  cases = [("ancestral", dict(sampler="ancestral"), s["ancestral_images"], s["ancestral_images"]),
           ("dpm_solver++", dict(sampler="dpm_solver++", num_steps=s["solver_steps"]), s["solver_images"],
            s["solver_batch"])]
  for dtype in s["dtypes"]:
    for name, sampling, images, batch in cases:
      exp = _experiment(size, dtype, **sampling)
      params = common.jit(functools.partial(experiment.init_state, exp.model, exp.tx, exp.info))(
          jax.random.key(0)).params
      draw = sampler.Sampler(exp, batch)
      start = time.perf_counter()
      draw(params, batch, jax.random.key(1), label="compile")
      first_s = time.perf_counter() - start
      start = time.perf_counter()
      out = draw(params, images, jax.random.key(2), label=name)
      run_s = time.perf_counter() - start
      assert out.shape == (images, *exp.info.shape) and np.isfinite(out).all()
      emit({"stage": "sample", "impl": "diffusion_jax", "sampler": name, "steps": draw.steps, "dtype": dtype,
            "images": images, "batch": batch, "seconds": run_s, "images_per_s": images / run_s,
            "compile_s": first_s - run_s * batch / images})


def inception_rows(size: str, emit: Emit) -> None:
  """FID features (resize to 299 and Inception-v3's 2048-d pool) of uint8 32x32 images, in jitted batches. The
  parameters are a random initialisation of the same network: the time does not depend on their values."""
  s = SIZES[size]
  net = inception.InceptionV3()
  params = jax.jit(net.init)(jax.random.key(0), np.zeros((1, inception.SIZE, inception.SIZE, 3), np.float32))["params"]
  images = np.random.default_rng(0).integers(0, 256, (s["inception_batch"], 32, 32, 3), np.uint8)
  compiled, compile_s, flops = common.compile_seconds_and_flops(jax.jit(inception.features), params, images)
  batches = s["inception_images"] // s["inception_batch"]
  batch_s = seconds_per_call(lambda: compiled(params, images), batches, common.block)
  emit({"stage": "inception", "impl": "diffusion_jax", "dtype": "float32", "images": batches * s["inception_batch"],
        "batch": s["inception_batch"], "images_per_s": s["inception_batch"] / batch_s, "compile_s": compile_s,
        "flops_per_image": flops / s["inception_batch"], "peak_bytes": common.peak_bytes(compiled)})

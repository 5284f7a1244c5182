"""Training throughput of the library's own jitted train step on the standard workloads.

    python benchmarks/train_throughput.py [--workload cpu|paper] [--batch 16] [--dtype float32|bfloat16]
        [--steps_per_call 1] [--repeats 5] [--alternate] [--out benchmarks/results/train_cpu.json]

Workloads (issue 6): `cpu` is the DDPM UNet at ch 64, ch_mult (1, 2, 2, 2), 2 res
blocks, attention at 16, dropout 0.1, 32x32x3, batch 16, T = 1000 linear, eps-MSE,
Adam 2e-4; `paper` is the exact CIFAR-10 model (35.7M parameters) at batch 128;
`toy` is a 16x16 UNet of two levels for dry runs.
Reports images/s of full optimizer steps after warm-up (median of `repeats`), the
FLOPs of one step from XLA's cost analysis, achieved GFLOP/s and that as a fraction
of the machine's float32 matmul rate measured in the same run; compile time apart.
`--alternate` prepares every setting first and times them in turn, one call each per
round, for `--repeats` rounds: on a shared CPU whose speed drifts, the per-round ratios
compare the settings, not the minutes they ran in.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
from configs import default  # noqa: E402
from diffusion_jax import schedules
from diffusion_jax.run import config as config_lib  # noqa: E402
from diffusion_jax.run import data, experiment, parallel
from diffusion_jax.run import step as step_lib  # noqa: E402

# `paper` is the DDPM CIFAR-10 model (GroupNorm of 32 groups, as configs/cifar10.py); `toy` compiles in seconds on
# a CPU (the accelerator check's dry run, benchmarks/device/).
WORKLOADS = {
    "toy": dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn=(8,), num_groups=8, size=16, batch=4),
    "cpu": dict(ch=64, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn=(16,), num_groups=8, size=32, batch=16),
    "paper": dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn=(16,), num_groups=32, size=32, batch=128),
}


def workload_config(name: str, batch: int | None, dtype: str, steps_per_call: int):
  c = default.get_config()
  w = WORKLOADS[name]
  c.model.ch, c.model.ch_mult, c.model.num_res_blocks = w["ch"], w["ch_mult"], w["num_res_blocks"]
  c.model.attn_resolutions, c.model.num_groups = w["attn"], w["num_groups"]
  c.model.dropout = 0.1
  c.training.global_batch_size = batch or WORKLOADS[name]["batch"]
  c.training.learning_rate = 2e-4
  c.training.warmup_steps = 0
  c.training.compute_dtype = dtype
  c.training.steps_per_call = steps_per_call
  return c


def dataset_info(name: str) -> data.DatasetInfo:
  """The workload's data: unlabelled RGB images of its size."""
  size = WORKLOADS[name]["size"]
  return data.DatasetInfo("cifar10-shaped", (size, size, 3), None, True)


def prepare(name: str, batch: int | None, dtype: str, steps_per_call: int) -> dict:
  """The workload's compiled train step, ready to run: `run()` does one call (`steps_per_call` steps)."""
  c = workload_config(name, batch, dtype, steps_per_call)
  info = dataset_info(name)
  model = experiment.build_model(c, info)
  tx = experiment.build_optimizer(c)
  mesh = parallel.make_mesh()
  schedule = schedules.make_schedule(config_lib.make_betas(c))
  state = common.jit(functools.partial(experiment.init_state, model, tx, info),
                     out_shardings=parallel.replicated(mesh))(jax.random.key(0))
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  B = c.training.global_batch_size
  shape = (steps_per_call, B, *info.shape)
  batch_arrays = {"x": jax.device_put(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8),
                                      parallel.batch_sharding(mesh, 1))}
  cfg = step_lib.StepConfig(0, "eps", "fixed_large", 0.9999, False)
  step = common.jit(functools.partial(step_lib.train_step, model=model, tx=tx, lr_fn=experiment.learning_rate_fn(c),
                                      cfg=cfg), donate_argnums=0)
  compiled, compile_s, flops = common.compile_seconds_and_flops(step, state, batch_arrays, schedule)
  holder = [state]

  def run():
    holder[0], metrics = compiled(holder[0], batch_arrays, schedule)
    return metrics

  return {"run": run, "params": int(n_params), "batch": B, "flops": flops, "compile_s": compile_s,
          "peak_bytes": common.peak_bytes(compiled)}


def row(name: str, dtype: str, steps_per_call: int, p: dict, seconds: float, matmul: float) -> dict:
  """The table row of prepared step `p` at `seconds` per call."""
  seconds /= steps_per_call
  flops_per_step = p["flops"] / steps_per_call
  return {
      "workload": name, "params": p["params"], "batch": p["batch"], "dtype": dtype, "steps_per_call": steps_per_call,
      "devices": jax.device_count(), "images_per_s": p["batch"] / seconds, "step_s": seconds,
      "gflop_per_step": flops_per_step / 1e9, "gflop_per_s": flops_per_step / seconds / 1e9,
      "fraction_of_matmul": flops_per_step / seconds / 1e9 / matmul, "compile_s": p["compile_s"],
  }


def bench(name: str, batch: int | None, dtype: str, steps_per_call: int, repeats: int, matmul: float) -> dict:
  p = prepare(name, batch, dtype, steps_per_call)
  r = row(name, dtype, steps_per_call, p, common.time_call(p["run"], repeats=repeats, min_seconds=2.0), matmul)
  print(r, flush=True)
  return r


def alternate(name: str, batch: int | None, settings: list[tuple[str, int]], rounds: int,
              matmul: float) -> list[dict]:
  """All `settings` (dtype, steps per call) prepared at once and timed in turn, one call each per round, so that
  they see the same machine: medians, and each one's per-round speed relative to the first setting."""
  preps = [prepare(name, batch, dtype, k) for dtype, k in settings]
  for p in preps:  # warm-up
    common.block(p["run"]())
  seconds = [[] for _ in preps]
  for r in range(rounds):
    for p, times in zip(preps, seconds):
      start = time.perf_counter()
      common.block(p["run"]())
      times.append(time.perf_counter() - start)
    print(f"round {r}: s per call {[t[-1] for t in seconds]}", flush=True)
  rows = []
  for (dtype, k), p, times in zip(settings, preps, seconds):
    speed = [(t0 / settings[0][1]) / (t / k) for t0, t in zip(seconds[0], times)]
    rows.append({**row(name, dtype, k, p, statistics.median(times), matmul), "speed_vs_first": statistics.median(speed),
                 "speed_vs_first_per_round": f"{min(speed):.3f}-{max(speed):.3f}"})
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workload", default="cpu", choices=sorted(WORKLOADS))
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--dtype", default="float32", help="comma-separated: float32,bfloat16")
  parser.add_argument("--steps_per_call", default="1", help="comma-separated, e.g. 1,4")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--alternate", action="store_true",
                      help="time the settings in alternating rounds of one call each (`--repeats` rounds)")
  parser.add_argument("--out", default=None)
  args = common.parse_args(parser)
  out = args.out or f"benchmarks/results/train_{args.workload}.json"
  os.makedirs(os.path.dirname(out), exist_ok=True)
  matmul = common.matmul_gflops()
  print(f"float32 matmul rate: {matmul:.1f} GFLOP/s", flush=True)
  settings = [(dtype, int(k)) for dtype in args.dtype.split(",") for k in args.steps_per_call.split(",")]
  if args.alternate:
    rows = alternate(args.workload, args.batch, settings, args.repeats, matmul)
  else:
    rows = [bench(args.workload, args.batch, dtype, k, args.repeats, matmul) for dtype, k in settings]
  common.report(
      f"Training throughput, {args.workload} workload ({jax.devices()[0].device_kind}, "
      f"float32 matmul {matmul:.0f} GFLOP/s)", rows,
      ["workload", "params", "batch", "dtype", "steps_per_call", "devices", "images_per_s", "step_s",
       "gflop_per_step", "gflop_per_s", "fraction_of_matmul", "compile_s"]
      + (["speed_vs_first", "speed_vs_first_per_round"] if args.alternate else []), out, {"matmul_gflops": matmul})


if __name__ == "__main__":
  main()

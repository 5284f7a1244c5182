"""The compiled sampler: per-step time vs one forward pass, compile time and memory vs T, scan vs Python loop.

    python benchmarks/sampling.py [--models mlp,unet_toy,unet_cpu] [--out benchmarks/results/sampling.json]
    python benchmarks/sampling.py --models unet_cpu --solvers 10,20,50   # the few-step samplers

For each model: one jitted forward pass; `sampling.ancestral_sample` (one `lax.scan`) at
T = 100 and T = 1000 (compile seconds, run seconds, seconds per step, the ratio
of a step to a forward pass: the sampler's own overhead, and XLA's peak-memory
estimate); and the same chain as a Python loop calling a jitted step T times
(one dispatch per step), which is what the scan replaces. `unet_cpu` is the CPU
workload's UNet (ch 64) at batch 16; its T = 1000 runs take ~7 minutes each on
2 CPU cores, so by default it runs T = 100 and T = 1000 is extrapolated (marked).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402
from diffusion_jax import diffusion, sampling, schedules, solvers  # noqa: E402
from diffusion_jax.models.mlp import MLPDenoiser  # noqa: E402
from diffusion_jax.models.unet import UNet  # noqa: E402

MODELS = {
    "mlp": (MLPDenoiser(hidden=128, num_layers=3), (16, 2)),  # microseconds of arithmetic: dispatch dominates
    "mlp_256": (MLPDenoiser(hidden=128, num_layers=3), (256, 2)),
    "unet_toy": (UNet(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0), (16, 16, 16, 3)),
    "unet_cpu": (UNet(ch=64, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.0),
                 (16, 32, 32, 3)),
}


def bench(name: str, full: bool) -> list[dict]:
  model, shape = MODELS[name]
  x = jax.random.normal(jax.random.key(0), shape)
  t = jnp.zeros((shape[0],), jnp.int32)
  params = common.jit(model.init)(jax.random.key(1), x, t)["params"]
  forward = common.jit(lambda p, x, t: model.apply({"params": p}, x, t))
  forward_time = lambda: common.time_call(lambda: forward(params, x, t))
  clip = not name.startswith("mlp")
  rows = []
  for T in (100, 1000):
    sched = schedules.make_schedule(schedules.get_beta_schedule("linear", num_diffusion_steps=T))
    run = common.jit(lambda p, s, k: sampling.ancestral_sample(
        s, model_fn=lambda x, t: model.apply({"params": p}, x, t), shape=shape, key=k, model_var_type="fixed_large",
        clip_denoised=clip))
    compiled, compile_s, _ = common.compile_seconds_and_flops(run, params, sched, jax.random.key(2))
    extrapolated = name == "unet_cpu" and T == 1000 and not full
    if extrapolated:
      run_s, forward_s = rows[-1]["per_step_s"] * T, rows[-1]["forward_s"]
    else:  # the forward pass timed right before and after the chain: a shared CPU's speed drifts
      before = forward_time()
      run_s = common.time_call(lambda: compiled(params, sched, jax.random.key(2)),
                               repeats=1 if name == "unet_cpu" else 3, min_seconds=0.0)
      forward_s = (before + forward_time()) / 2

    # The same chain as a Python loop: one jitted step, dispatched T times.
    @common.jit
    def step(p, s, x, t, key):
      tb = jnp.full((shape[0],), t, jnp.int32)
      out = diffusion.p_mean_variance(
          s, model_output=model.apply({"params": p}, x, tb), x_t=x, t=tb, model_var_type="fixed_large",
          clip_denoised=clip)
      return out.mean + jnp.where(t > 0, jnp.exp(0.5 * out.log_variance), 0.0) * jax.random.normal(key, shape)

    def loop():
      xt = jax.random.normal(jax.random.key(3), shape)
      for i in range(T - 1, -1, -1):
        xt = step(params, sched, xt, i, jax.random.fold_in(jax.random.key(4), i))
      return xt

    loop_s = None
    if name != "unet_cpu" or full:
      loop_s = common.time_call(loop, repeats=3, min_seconds=0.0)
    row = {
        "model": name, "batch_shape": "x".join(map(str, shape)), "T": T, "forward_s": forward_s,
        "compile_s": compile_s, "run_s": run_s, "per_step_s": run_s / T,
        "step_over_forward": run_s / T / forward_s, "peak_mib": common.peak_bytes(compiled) / 2**20,
        "python_loop_s": loop_s if loop_s is not None else "", "scan_speedup": loop_s / run_s if loop_s else "",
        "extrapolated": extrapolated,
    }
    print(row, flush=True)
    rows.append(row)
  return rows


def bench_solvers(name: str, steps: list[int]) -> list[dict]:
  """Seconds per batch and compile seconds of each few-step sampler at each number of network calls."""
  model, shape = MODELS[name]
  x = jax.random.normal(jax.random.key(0), shape)
  params = common.jit(model.init)(jax.random.key(1), x, jnp.zeros((shape[0],), jnp.int32))["params"]
  betas = schedules.get_beta_schedule("linear", num_diffusion_steps=1000)
  sched = schedules.make_schedule(betas)
  net = lambda p: lambda x, t: model.apply({"params": p}, x, t)
  rows = []
  for sampler, order in [("ddim", None), ("dpm_solver++", 2), ("dpm_solver++", 3), ("unipc", 2), ("unipc", 3)]:
    for n in steps:
      ts = schedules.sampling_timesteps(betas, num_steps=n, spacing="logsnr")
      if sampler == "ddim":
        run = common.jit(lambda p, s, k: sampling.ddim_sample(s, model_fn=net(p), shape=shape, key=k, timesteps=ts))
        args = (params, sched, jax.random.key(2))
      else:
        run = common.jit(lambda p, tab, k: solvers.solver_sample(tab, model_fn=net(p), shape=shape, key=k))
        args = (params, solvers.solver_table(betas, timesteps=ts, solver=sampler, order=order), jax.random.key(2))
      compiled, compile_s, _ = common.compile_seconds_and_flops(run, *args)
      run_s = common.time_call(lambda: compiled(*args), repeats=3, min_seconds=0.0)
      row = {"model": name, "batch_shape": "x".join(map(str, shape)), "sampler": sampler,
             "order": order or "", "calls": n, "compile_s": compile_s, "s_per_batch": run_s,
             "peak_mib": common.peak_bytes(compiled) / 2**20}
      print(row, flush=True)
      rows.append(row)
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default="mlp,mlp_256,unet_toy,unet_cpu")
  parser.add_argument("--full", action="store_true", help="also run unet_cpu at T = 1000 and its Python loop")
  parser.add_argument("--out", default="benchmarks/results/sampling.json")
  parser.add_argument("--solvers", default="", help="instead: the few-step samplers at these network calls, "
                      "e.g. 10,20,50 (logsnr spacing), on --models (out: sampling_solvers.json)")
  args = common.parse_args(parser)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  start = time.time()
  if args.solvers:
    rows = [r for m in args.models.split(",") for r in bench_solvers(m, [int(n) for n in args.solvers.split(",")])]
    common.report(f"Few-step samplers ({jax.devices()[0].device_kind}, {time.time() - start:.0f} s)", rows,
                  ["model", "batch_shape", "sampler", "order", "calls", "compile_s", "s_per_batch", "peak_mib"],
                  args.out.replace(".json", "_solvers.json"))
    return
  rows = [r for m in args.models.split(",") for r in bench(m, args.full)]
  common.report(f"Sampling ({jax.devices()[0].device_kind}, {time.time() - start:.0f} s)", rows,
                ["model", "batch_shape", "T", "forward_s", "compile_s", "run_s", "per_step_s", "step_over_forward",
                 "peak_mib", "python_loop_s", "scan_speedup", "extrapolated"], args.out)


if __name__ == "__main__":
  main()

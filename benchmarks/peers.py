"""Ours against the PyTorch peer, same machine, same run, same work.

    pip install -e ".[bench]"      # torch==2.13.0 (CPU build) and diffusers
    python benchmarks/peers.py [--workload cpu] [--dtype float32|bfloat16] [--rounds 5] [--train_steps 3]
        [--sample_steps 10] [--steps_per_call 1] [--out benchmarks/results/peers_cpu.json]

The peer is diffusers' `UNet2DModel` configured as the DDPM architecture (the
layout of google/ddpm-cifar10-32: ResNet blocks, attention at 16x16) with
`DDPMScheduler` (linear betas, T = 1000): training is Adam 2e-4 on the eps-MSE,
sampling is its Python loop over `scheduler.step`. Ours is `step.train_step` and
`sampling.ancestral_sample` (one `lax.scan`); `--steps_per_call k` runs k of our optimizer
steps per compiled call (`training.steps_per_call`), the peer's one per call.
Sampling is timed over `sample_steps` denoising steps for both (a full 1000-step
batch takes ~4-7 minutes per side on 2 CPU cores); the per-1000-step figure is
that time x 1000 / sample_steps. The two sides alternate, round after round, so
that both see the same machine (a shared CPU's speed drifts by +-10% within
minutes); the table gives the medians and the range of the per-round ratios.
`--dtype bfloat16` runs ours with `training.compute_dtype = "bfloat16"` (parameters
float32) and the peer under `torch.autocast("cpu", dtype=torch.bfloat16)`, its
mixed-precision mode. The CPU (vendor, model, AMX or not) goes into the title and JSON.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
import train_throughput  # noqa: E402
from diffusion_jax import sampling, schedules  # noqa: E402
from diffusion_jax.run import experiment


def torch_side(workload: dict, batch: int, sample_steps: int, dtype: str, device: str = "cpu",
               compile_mode: str | None = None) -> dict:
  """diffusers' DDPM UNet of `workload`'s layout (`train_throughput.WORKLOADS`): `train()` is one Adam step
  (returning the loss tensor, not synchronised), `sample()` is `sample_steps` scheduler steps, under autocast to
  bfloat16 for `dtype` bfloat16, on `device`; `compile_mode`: the model `torch.compile`d with this mode
  ("default", "max-autotune", ...; "aot_eager": that backend, which needs no C++ compiler), None: eager."""
  import torch
  from diffusers import DDPMScheduler, UNet2DModel

  autocast = lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  ch, size = workload["ch"], workload["size"]
  attn = [size // 2**i in workload["attn"] for i in range(len(workload["ch_mult"]))]
  model = UNet2DModel(
      sample_size=size, in_channels=3, out_channels=3, layers_per_block=workload["num_res_blocks"],
      block_out_channels=tuple(ch * m for m in workload["ch_mult"]),
      down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
      up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
      dropout=0.1, norm_num_groups=workload["num_groups"]).to(device)
  n_params = sum(p.numel() for p in model.parameters())
  net = model
  if compile_mode == "aot_eager":
    net = torch.compile(model, backend="aot_eager")
  elif compile_mode is not None:
    net = torch.compile(model, mode=compile_mode)
  scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_large",
                            clip_sample=True)
  scheduler.set_timesteps(1000)
  opt = torch.optim.Adam(model.parameters(), lr=2e-4)
  x0 = torch.rand(batch, 3, size, size, device=device) * 2 - 1
  alpha_bar = scheduler.alphas_cumprod.to(device)

  def train_step():
    model.train()
    noise = torch.randn_like(x0)
    t = torch.randint(0, 1000, (batch,), device=device)
    a = alpha_bar[t].view(-1, 1, 1, 1)
    with autocast():
      out = net(a.sqrt() * x0 + (1 - a).sqrt() * noise, t).sample
    loss = torch.nn.functional.mse_loss(out.float(), noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss

  def sample():
    model.eval()
    with torch.no_grad():
      x = torch.randn(batch, 3, size, size, device=device)
      for t in scheduler.timesteps[:sample_steps]:
        with autocast():
          out = net(x, t).sample
        x = scheduler.step(out.float(), t, x).prev_sample
    return x

  mode = ", bfloat16 autocast" if dtype == "bfloat16" else ""
  mode += f", torch.compile {compile_mode}" if compile_mode else ""
  return {"name": f"diffusers UNet2DModel + DDPMScheduler (torch {torch.__version__}{mode})", "params": n_params,
          "train": train_step, "steps_per_call": 1, "sample": sample}


def our_side(workload: str, batch: int, sample_steps: int, steps_per_call: int, dtype: str) -> dict:
  """`step.train_step` (compiled) and the first `sample_steps` steps of the 1000-step scan sampler."""
  step = train_throughput.prepare(workload, batch, dtype, steps_per_call)
  c = train_throughput.workload_config(workload, batch, dtype, 1)
  info = train_throughput.dataset_info(workload)
  c.model.dropout = 0.0
  model = experiment.build_model(c, info)
  params = common.jit(functools.partial(experiment.init_state, model, experiment.build_optimizer(c), info))(
      jax.random.key(0)).params
  sched = schedules.make_schedule(schedules.get_beta_schedule("linear", num_diffusion_steps=1000))
  # The first `sample_steps` steps of the 1000-step chain, as one scan (the full chain is the same program).
  sub = jax.tree.map(lambda b: b[1000 - sample_steps:], sched)
  run = common.jit(lambda p, s, k: sampling.ancestral_sample(
      s, model_fn=lambda x, t: model.apply({"params": p}, x, t), shape=(batch, *info.shape), key=k,
      model_var_type="fixed_large"))
  compiled, _, _ = common.compile_seconds_and_flops(run, params, sub, jax.random.key(1))
  per_call = f", {steps_per_call} steps per call" if steps_per_call > 1 else ""
  per_call += ", bfloat16 compute" if dtype == "bfloat16" else ""
  return {"name": f"diffusion_jax (JAX {jax.__version__}{per_call})", "params": step["params"],
          "flops": step["flops"] / steps_per_call, "train": lambda: common.block(step["run"]()),
          "steps_per_call": steps_per_call,
          "sample": lambda: common.block(compiled(params, sub, jax.random.key(1)))}


def seconds(fn: Callable[[], object], calls: int) -> float:
  """Mean wall seconds of `calls` calls of `fn` (each blocks until its result is ready)."""
  start = time.perf_counter()
  for _ in range(calls):
    fn()
  return (time.perf_counter() - start) / calls


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workload", default="cpu", choices=sorted(train_throughput.WORKLOADS))
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--sample_steps", type=int, default=10, help="denoising steps timed per round")
  parser.add_argument("--train_steps", type=int, default=3, help="optimizer steps timed per round")
  parser.add_argument("--steps_per_call", type=int, default=1, help="our optimizer steps per compiled call")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                      help="compute dtype: ours training.compute_dtype, the peer's CPU autocast")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--out", default=None)
  args = common.parse_args(parser)
  out = args.out or f"benchmarks/results/peers_{args.workload}.json"
  os.makedirs(os.path.dirname(out), exist_ok=True)
  batch = args.batch or train_throughput.WORKLOADS[args.workload]["batch"]
  matmul = common.matmul_gflops()
  sides = [our_side(args.workload, batch, args.sample_steps, args.steps_per_call, args.dtype),
           torch_side(train_throughput.WORKLOADS[args.workload], batch, args.sample_steps, args.dtype)]
  for side in sides:  # warm-up
    side["train"]()
    side["sample"]()
  train_s, sample_s = [[] for _ in sides], [[] for _ in sides]
  for r in range(args.rounds):  # alternate the two sides, so that both see the same machine
    for i, side in enumerate(sides):
      k = side["steps_per_call"]
      train_s[i].append(seconds(side["train"], max(1, args.train_steps // k)) / k)
      sample_s[i].append(seconds(side["sample"], 1) / args.sample_steps)
    print(f"round {r}: train s/step {[t[-1] for t in train_s]}, sample s/step {[t[-1] for t in sample_s]}",
          flush=True)
  rows = []
  for i, side in enumerate(sides):
    step, per_step = statistics.median(train_s[i]), statistics.median(sample_s[i])
    rows.append({"impl": side["name"], "params": side["params"], "train_images_per_s": batch / step,
                 "train_step_s": step, "sample_step_s": per_step, "sample_1000_steps_s": per_step * 1000})
  rows[0]["train_fraction_of_matmul"] = sides[0]["flops"] / rows[0]["train_step_s"] / 1e9 / matmul
  train_ratio = [b / a for a, b in zip(*train_s)]
  sample_ratio = [a / b for a, b in zip(*sample_s)]
  rows.append({"impl": "ratio ours/theirs (higher is better for images/s, lower for seconds)",
               **{k: rows[0][k] / rows[1][k] for k in ("train_images_per_s", "sample_step_s", "sample_1000_steps_s")},
               "train_ratio_per_round": f"{min(train_ratio):.3f}-{max(train_ratio):.3f}",
               "sample_ratio_per_round": f"{min(sample_ratio):.3f}-{max(sample_ratio):.3f}"})
  common.report(f"{args.workload} workload, batch {batch}, {args.dtype}, ours vs PyTorch peer, medians of "
                f"{args.rounds} alternating rounds ({common.cpu_description()}; float32 matmul {matmul:.0f} GFLOP/s)",
                rows,
                ["impl", "params", "train_images_per_s", "train_fraction_of_matmul", "sample_step_s",
                 "sample_1000_steps_s", "train_ratio_per_round", "sample_ratio_per_round"], out,
                {"matmul_gflops": matmul, "train_step_s": train_s, "sample_step_s": sample_s})


if __name__ == "__main__":
  main()

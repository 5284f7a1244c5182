"""Ours against the PyTorch peer, same machine, same run, same work.

    pip install -e ".[bench]"      # torch==2.13.0 (CPU build) and diffusers
    python benchmarks/peers.py [--workload cpu] [--sample_steps 20] [--out benchmarks/results/peers_cpu.json]

The peer is diffusers' `UNet2DModel` configured as the DDPM architecture (the
layout of google/ddpm-cifar10-32: ResNet blocks, attention at 16x16) with
`DDPMScheduler` (linear betas, T = 1000): training is Adam 2e-4 on the eps-MSE,
sampling is its Python loop over `scheduler.step`. Ours is `train.train_step` and
`sampling.sample` (one `lax.scan`). Sampling is timed over `sample_steps`
denoising steps for both (a full 1000-step batch takes ~4-7 minutes per side on
2 CPU cores); the per-1000-step figure is that time x 1000 / sample_steps.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
import train_throughput  # noqa: E402

from diffusion_jax import sampling, schedules, train  # noqa: E402


def torch_figures(ch: int, batch: int, sample_steps: int, repeats: int) -> dict:
  import torch
  from diffusers import DDPMScheduler, UNet2DModel

  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  model = UNet2DModel(
      sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
      block_out_channels=(ch, 2 * ch, 2 * ch, 2 * ch),
      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
      dropout=0.1, norm_num_groups=32)
  n_params = sum(p.numel() for p in model.parameters())
  scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_large",
                            clip_sample=True)
  opt = torch.optim.Adam(model.parameters(), lr=2e-4)
  x0 = torch.rand(batch, 3, 32, 32) * 2 - 1

  def train_step():
    model.train()
    noise = torch.randn_like(x0)
    t = torch.randint(0, 1000, (batch,))
    loss = torch.nn.functional.mse_loss(model(scheduler.add_noise(x0, noise, t), t).sample, noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()

  for _ in range(2):
    train_step()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(3):
      train_step()
    times.append((time.perf_counter() - start) / 3)
  train_s = float(np.median(times))

  model.eval()
  scheduler.set_timesteps(1000)
  with torch.no_grad():
    x = torch.randn(batch, 3, 32, 32)
    for t in scheduler.timesteps[:2]:  # warm-up
      x = scheduler.step(model(x, t).sample, t, x).prev_sample
    start = time.perf_counter()
    for t in scheduler.timesteps[2: 2 + sample_steps]:
      x = scheduler.step(model(x, t).sample, t, x).prev_sample
    per_step = (time.perf_counter() - start) / sample_steps
  return {"params": n_params, "train_images_per_s": batch / train_s, "train_step_s": train_s,
          "sample_step_s": per_step, "sample_1000_steps_s": per_step * 1000, "torch": torch.__version__}


def our_figures(workload: str, batch: int, sample_steps: int, repeats: int, matmul: float) -> dict:
  row = train_throughput.bench(workload, batch, "float32", 1, repeats, matmul)
  c = train_throughput.workload_config(workload, batch, "float32", 1)
  info = train.data.DatasetInfo("cifar10-shaped", (32, 32, 3), None, True)
  c.model.dropout = 0.0
  model = train.build_model(c, info)
  params = common.jit(functools.partial(train.init_state, model, train.build_optimizer(c), info))(
      jax.random.key(0)).params
  sched = schedules.make_schedule(schedules.get_beta_schedule("linear", num_diffusion_steps=1000))
  # The first `sample_steps` steps of the 1000-step chain, as one scan (the full chain is the same program).
  sub = jax.tree.map(lambda b: b[1000 - sample_steps:], sched)
  run = common.jit(lambda p, s, k: sampling.sample(lambda x, t: model.apply({"params": p}, x, t), s,
                                                (batch, 32, 32, 3), k, model_var_type="fixed_large"))
  compiled, _, _ = common.compile_seconds_and_flops(run, params, sub, jax.random.key(1))
  per_step = common.time_call(lambda: compiled(params, sub, jax.random.key(1)), repeats=3, min_seconds=0.0)
  per_step /= sample_steps
  return {"params": row["params"], "train_images_per_s": row["images_per_s"], "train_step_s": row["step_s"],
          "train_fraction_of_matmul": row["fraction_of_matmul"], "sample_step_s": per_step,
          "sample_1000_steps_s": per_step * 1000}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workload", default="cpu", choices=sorted(train_throughput.WORKLOADS))
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--sample_steps", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default=None)
  parser.add_argument("--xla_defaults", action="store_true",
                      help="compile with XLA's default options instead of diffusion_jax.compiler's")
  args = parser.parse_args()
  common.XLA_DEFAULTS = args.xla_defaults
  out = args.out or f"benchmarks/results/peers_{args.workload}.json"
  os.makedirs(os.path.dirname(out), exist_ok=True)
  batch = args.batch or train_throughput.WORKLOADS[args.workload]["batch"]
  ch = train_throughput.WORKLOADS[args.workload]["ch"]
  matmul = common.matmul_gflops()
  ours = our_figures(args.workload, batch, args.sample_steps, args.repeats, matmul)
  theirs = torch_figures(ch, batch, args.sample_steps, args.repeats)
  rows = [{"impl": "diffusion_jax (JAX " + jax.__version__ + ")", **ours},
          {"impl": "diffusers UNet2DModel + DDPMScheduler (torch " + theirs.pop("torch") + ")", **theirs},
          {"impl": "ratio ours/theirs (higher is better for images/s, lower for seconds)",
           **{k: ours[k] / theirs[k] for k in ("train_images_per_s", "sample_step_s", "sample_1000_steps_s")}}]
  common.report(f"{args.workload} workload, batch {batch}, ours vs PyTorch peer "
                f"(float32 matmul {matmul:.0f} GFLOP/s)", rows,
                ["impl", "params", "train_images_per_s", "train_fraction_of_matmul", "sample_step_s",
                 "sample_1000_steps_s"], out, {"matmul_gflops": matmul})


if __name__ == "__main__":
  main()

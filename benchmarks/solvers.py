"""Few-step samplers on a trained run: sample quality and seconds per batch at 10, 20 and 50 network calls.

    python main.py --config configs/digits.py --workdir workdirs/digits       # ~5 min on 2 CPU cores
    python benchmarks/solvers.py --workdir workdirs/digits [--num_samples 1000]

For every sampler (ancestral on the respaced process, DDIM with eta = 0, DPM-Solver++ of orders 2 and 3, UniPC
of orders 2 and 3, Heun and Euler of Karras et al. without churn), every spacing and every number of calls, draws
`--num_samples` samples of the run's EMA parameters from one key and scores them with the run's quality metric
(`eval.quality_metric`: the dataset FID of the classifier features for the digits), beside 1000-step ancestral
sampling (Algorithm 2), the limit the deterministic samplers converge to (DDIM with eta = 0 on all T steps: the
probability-flow ODE) and the real test split. Prints a table, writes it as JSON and draws `<out>.png`: one panel
per spacing, the figure against the number of calls, a line per sampler, the 1000-step ancestral figure dashed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402
from diffusion_jax.run import images, parallel, quality, sampler, trained  # noqa: E402

SAMPLERS = {"ancestral": ("ancestral", 2), "ddim": ("ddim", 2), "dpm_solver++ 2": ("dpm_solver++", 2),
            "dpm_solver++ 3": ("dpm_solver++", 3), "unipc 2": ("unipc", 2), "unipc 3": ("unipc", 3),
            "heun": ("heun", 2), "euler": ("euler", 2)}


def draw(workdir: str, num_samples: int, batch_size: int, **overrides) -> tuple[trained.Run, object, float]:
  """(run, samples, seconds per batch after compilation) of the run's sampler under `overrides`."""
  run = trained.load(workdir, **{"sampling.batch_size": batch_size, **overrides})
  draw_batches = sampler.Sampler(run.experiment, batch_size)
  key = jax.random.key(run.config.sampling.seed)
  draw_batches(run.params, batch_size, key, "compiling")  # compile (and warm up) on one batch
  start = time.perf_counter()
  samples = draw_batches(run.params, num_samples, key)
  return run, samples, (time.perf_counter() - start) / -(-num_samples // batch_size)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="a trained main.py workdir")
  parser.add_argument("--num_samples", type=int, default=1000)
  parser.add_argument("--batch_size", type=int, default=500)
  parser.add_argument("--steps", default="10,20,50")
  parser.add_argument("--spacings", default="trailing,logsnr,linspace,karras")
  parser.add_argument("--samplers", default=",".join(SAMPLERS))
  parser.add_argument("--out", default="benchmarks/results/solvers_digits.json")
  args = common.parse_args(parser)
  steps = [int(n) for n in args.steps.split(",")]
  start = time.time()
  run, samples, per_batch = draw(args.workdir, args.num_samples, args.batch_size)
  config = run.config.copy_and_resolve_references()
  config.eval.quality_samples = args.num_samples
  info = run.experiment.info
  scorer = quality.Scorer(config, info, parallel.make_mesh(), quality.check_quality_config(config, info))
  reference = scorer.score(samples, "1000-step ancestral")
  name = next(iter(reference))  # the headline figure: fid, dataset_fid or energy_distance
  T = run.config.diffusion.num_diffusion_steps
  rows = [{"sampler": "ancestral (Algorithm 2)", "spacing": "-", "calls": T, "s_per_batch": per_batch, **reference}]
  _, samples, per_batch = draw(args.workdir, args.num_samples, args.batch_size, **{"sampling.sampler": "ddim"})
  rows.append({"sampler": "ddim, eta 0 (ODE limit)", "spacing": "-", "calls": T, "s_per_batch": per_batch,
               **scorer.score(samples, "ODE limit")})
  print(rows[-1], flush=True)
  series = {spacing: {} for spacing in args.spacings.split(",")}
  for label in args.samplers.split(","):
    sampler, order = SAMPLERS[label]
    for spacing in series:
      ys = []
      for n in steps:
        _, samples, per_batch = draw(args.workdir, args.num_samples, args.batch_size, **{
            "sampling.sampler": sampler, "sampling.order": order, "sampling.num_steps": n, "sampling.spacing": spacing})
        figures = scorer.score(samples, f"{label} {spacing} {n}")
        rows.append({"sampler": label, "spacing": spacing, "calls": n, "s_per_batch": per_batch, **figures})
        print(rows[-1], flush=True)
        ys.append(figures[name])
      series[spacing][label] = ys
  rows.append({"sampler": "real test split", "spacing": "-", "calls": "-", "s_per_batch": "",
               **scorer.baseline})
  columns = ["sampler", "spacing", "calls", "s_per_batch", *reference]
  common.report(f"Few-step samplers on {args.workdir}: {args.num_samples} samples, batches of {args.batch_size} "
                f"({jax.devices()[0].device_kind}, {time.time() - start:.0f} s)", rows, columns, args.out)
  plot = os.path.splitext(args.out)[0] + ".png"
  images.save_line_plots(steps, series, plot, x_label=f"network calls ({name})",
                         baselines={k: reference[name] for k in series}, panel=(420, 320))
  print(f"wrote {plot}")


if __name__ == "__main__":
  main()

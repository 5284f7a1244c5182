"""Training objectives on the built-in digits job: the quality figure against training steps, one run per objective.

    python benchmarks/objectives.py                                  # 9 runs of 3000 steps: ~1 h on 2 CPU cores
    python benchmarks/objectives.py --runs eps,eps-min_snr --steps 1000 --every 250

Every run is the digits job as it was before this benchmark chose its objective (configs/digits.py with `BEFORE`:
uniform weighting, dropout 0.1, learning rate 1e-3, EMA decay 0.999, the 1000-step ancestral sampler) with one
objective: the loss weighting (`uniform`, `min_snr` with gamma 5, `p2` with k = gamma = 1), the parameterisation
(eps or v) and, for v, zero terminal SNR. Each scores `--quality_samples` EMA samples every `--every` steps with the
job's quality metric: dataset FID and confident share of the digits classifier, each with its bootstrap spread,
beside the real test digits'.
Prints a table, writes it as JSON and `<out>.png` (each figure against steps, a line per run, real data dashed):
per run its final figures and the steps it needs to reach the first run's final figure (linear between
evaluations; the first run is the reference, uniform eps by default), and that speed-up.
Workdirs are kept under `--workdir_root`: an interrupted benchmark resumes each run from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402
from configs import digits  # noqa: E402
from diffusion_jax.run import config as config_lib  # noqa: E402
from diffusion_jax.run import images, train  # noqa: E402

# configs/digits.py's objective and sampler before issue 26 tuned them (README "Training objectives"): what the runs
# vary from, and how they are scored (zero terminal SNR cannot start Heun at sigma = infinity)
BEFORE = {"training.loss_weighting": "uniform", "model.dropout": 0.1, "training.learning_rate": 1e-3,
          "training.ema_decay": 0.999, "sampling.sampler": "ancestral", "sampling.num_steps": None,
          "sampling.churn": 0.0}
V = {"diffusion.model_mean_type": "v"}
ZTSNR = {**V, "diffusion.rescale_zero_terminal_snr": True}
RUNS = {
    "eps": {},
    "eps-min_snr": {"training.loss_weighting": "min_snr"},
    "eps-p2": {"training.loss_weighting": "p2"},
    "v": V,
    "v-min_snr": {**V, "training.loss_weighting": "min_snr"},
    "v-p2": {**V, "training.loss_weighting": "p2"},
    "v-ztsnr": ZTSNR,
    "v-ztsnr-min_snr": {**ZTSNR, "training.loss_weighting": "min_snr"},
    "v-ztsnr-p2": {**ZTSNR, "training.loss_weighting": "p2"},
}
FIGURES = {"dataset_fid": min, "confident_share": max}  # the figures compared, and which way is better


def run_config(overrides: dict[str, Any], args: argparse.Namespace) -> Any:
  """configs/digits.py with `BEFORE`, the objective's `overrides` and the benchmark's length and cadence."""
  c = digits.get_config()
  for key, value in {**BEFORE, **overrides, "training.num_train_steps": args.steps,
                     "eval.quality_every_steps": args.every,
                     "eval.quality_samples": args.quality_samples, "data.data_dir": args.data_dir,
                     "training.sample_every_steps": args.steps}.items():
    config_lib.set_key(c, key, value)
  return c


def quality_series(workdir: str) -> dict[int, dict[str, float]]:
  """step -> the `quality/...` figures that run logged in its metrics.jsonl (the last line of a step wins)."""
  series = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if any(k.startswith("quality/") for k in row):
        series[row["step"]] = {k.removeprefix("quality/"): v for k, v in row.items() if k.startswith("quality/")}
  return dict(sorted(series.items()))


def steps_to_reach(steps: list[int], values: list[float], target: float, better: Any) -> float | None:
  """The first step at which `values` reach `target` (linear between evaluations), None if they never do."""
  reached = lambda v: better(v, target) == v
  for i, (s, v) in enumerate(zip(steps, values)):
    if reached(v):
      if i == 0 or values[i - 1] == v:
        return float(s)
      s0, v0 = steps[i - 1], values[i - 1]
      return s0 + (s - s0) * (target - v0) / (v - v0)
  return None


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, the first is the reference: {RUNS}")
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--every", type=int, default=500, help="training steps between quality figures")
  parser.add_argument("--quality_samples", type=int, default=297, help="samples per figure (the job's)")
  parser.add_argument("--data_dir", default=None, help="TFDS data_dir of the digits (None: the default)")
  parser.add_argument("--workdir_root", default="workdirs/objectives")
  parser.add_argument("--out", default="benchmarks/results/objectives_digits.json")
  args = common.parse_args(parser)
  names = args.runs.split(",")
  unknown = [n for n in names if n not in RUNS]
  if unknown:
    raise ValueError(f"--runs: unknown {unknown}; allowed: {', '.join(RUNS)}.")
  start = time.time()
  series, seconds = {}, {}
  for name in names:
    workdir = os.path.join(args.workdir_root, name)
    begin = time.time()
    train.train_and_evaluate(run_config(RUNS[name], args), workdir)
    seconds[name] = time.time() - begin
    series[name] = quality_series(workdir)
  reference = series[names[0]]
  steps = list(reference)
  final = reference[steps[-1]]
  own = {k: steps_to_reach(steps, [reference[s][k] for s in steps], final[k], better) for k, better in FIGURES.items()}
  rows = []
  for name in names:
    last = series[name][steps[-1]]
    row = {"run": name, "train_and_score_s": round(seconds[name])}
    for k, better in FIGURES.items():
      row[k] = f"{last[k]:.4g} +- {last[f'{k}_std']:.2g}"
      reach = steps_to_reach(steps, [series[name][s][k] for s in steps], final[k], better)
      row[f"steps_to_{names[0]}_{k}"] = "-" if reach is None else round(reach)
      row[f"speedup_{k}"] = "-" if reach is None else round(own[k] / reach, 2)
    rows.append(row)
  rows.append({"run": "real test digits", **{k: f"{final[f'{k}_baseline']:.4g} +- {final[f'{k}_baseline_std']:.2g}"
                                             for k in FIGURES}})
  columns = ["run", *(c for k in FIGURES for c in (k, f"steps_to_{names[0]}_{k}", f"speedup_{k}")), "train_and_score_s"]
  title = (f"Objectives on the digits job: {args.steps} steps, {args.quality_samples} samples every {args.every} steps "
           f"({common.cpu_description()}, {time.time() - start:.0f} s)")
  common.report(title, rows, columns, args.out, extra={"steps": steps, "series": series})
  plot = os.path.splitext(args.out)[0] + ".png"
  images.save_line_plots(steps, {k: {n: [series[n][s][k] for s in steps] for n in names} for k in FIGURES}, plot,
                         x_label="training steps", baselines={k: final[f"{k}_baseline"] for k in FIGURES},
                         panel=(480, 360))
  print(f"wrote {plot}")


if __name__ == "__main__":
  main()

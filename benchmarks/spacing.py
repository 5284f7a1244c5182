"""Which spacing suits which deterministic sampler: the error of the sampled law on Gaussian data with its exact
noise predictor, for every sampler, spacing and number of network calls.

    python benchmarks/spacing.py            # seconds on a CPU; JSON in benchmarks/results/spacing_gaussian.json
    python benchmarks/spacing.py --digits benchmarks/results/solvers_digits_epyc.json    # and each sampler's best

Data N(M, S^2) (per pixel) and its exact eps, float64, the linear schedule of T = 1000 (the configs'). A
deterministic sampler maps x_T to b + A x_T, so from x_T ~ N(0, 1), as it is used, its samples are exactly
N(b, A^2) (b and A read off two runs). The figure is the 2-Wasserstein distance to the data law relative to S,
sqrt((b - M)^2 + (|A| - S)^2) / S: it counts the discretisation error, the start at N(0, 1) instead of the exact
x_T marginal and the last step's x_0 prediction. Two data laws: S = 0.5 (a spread-out pixel) and S = 0.1 (a sharp
one, where the last steps matter most). The network calls are those of `sampling.num_steps` (Heun: calls // 2 + 1
steps, its last one or two Euler's).

With `--digits`, the JSON of `benchmarks/solvers.py` on a trained run, it also names each sampler's best spacing
(`diffusion_jax.run.sampler.DEFAULT_SPACINGS`): the least mean of log(figure / the best figure at that number of
calls) over the calls, the digits' dataset FID and the Gaussian laws each counting half (the ancestral sampler,
not deterministic: the digits alone).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402
from diffusion_jax import karras, sampling, schedules, solvers  # noqa: E402

SAMPLERS = {"ddim": ("ddim", 1), "dpm_solver++ 2": ("dpm_solver++", 2), "dpm_solver++ 3": ("dpm_solver++", 3),
            "unipc 2": ("unipc", 2), "unipc 3": ("unipc", 3), "heun": ("heun", 2), "euler": ("euler", 1)}
LAWS = {"S = 0.5": (0.3, 0.5), "S = 0.1": (0.3, 0.1)}


def relative_w2(betas: np.ndarray, sampler: str, order: int, spacing: str, calls: int, m: float, s: float) -> float:
  """sqrt((b - m)^2 + (|A| - s)^2) / s of the sampler's affine map x_T -> b + A x_T on data N(m, s^2)."""
  with jax.enable_x64(True):
    sched = schedules.make_schedule(betas, dtype=jnp.float64)

    def oracle(x, t):
      a = sched.alphas_cumprod[t][:, None]
      return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * m) / (a * s * s + 1 - a)

    n = calls // 2 + 1 if sampler == "heun" else calls
    ts = schedules.sampling_timesteps(betas, num_steps=n, spacing=spacing)
    common_args = dict(model_fn=oracle, shape=(2, 1), key=jax.random.key(0), clip_denoised=False,
                       x_T=jnp.array([[0.0], [1.0]]))
    if sampler == "ddim":
      out = sampling.ddim_sample(sched, timesteps=ts, **common_args)
    elif sampler in karras.SAMPLERS:
      table = karras.karras_table(betas, timesteps=ts, sampler=sampler, dtype=jnp.float64,
                                  calls=min(calls, 2 * n - 1) if sampler == "heun" else None)
      out = karras.karras_sample(table, **common_args)
    else:
      table = solvers.solver_table(betas, timesteps=ts, solver=sampler, order=order, dtype=jnp.float64)
      out = solvers.solver_sample(table, **common_args)
  b, slope = float(out[0, 0]), float(out[1, 0] - out[0, 0])
  return float(np.hypot(b - m, abs(slope) - s) / s)


def best_spacings(gaussian: list[dict], digits: list[dict], calls: list[int]) -> list[dict]:
  """Each sampler's mean log-ratio to the best per spacing (digits and Gaussian halves), and the least one."""
  spacings = sorted({r["spacing"] for r in digits} - {"-"}, key=schedules.SPACINGS.index)
  out = []
  for label in dict.fromkeys(r["sampler"] for r in digits if r["spacing"] in spacings):
    parts = []
    for rows, key, laws in [(digits, "dataset_fid", [None]), (gaussian, None, list(LAWS))]:
      ratios = []
      for law in laws:
        for c in calls:
          v = {sp: next((float(r[key] if key else r[f"{c} calls"].rstrip(" *")) for r in rows if r["sampler"] == label
                         and r["spacing"] == sp and (key is None or r["calls"] == c) and r.get("law") == law), None)
               for sp in spacings}
          if None not in v.values():
            ratios.append([np.log(v[sp] / min(v.values())) for sp in spacings])
      if ratios:
        parts.append(np.mean(ratios, 0))
    score = np.mean(parts, 0)
    out.append({"sampler": label, **{sp: f"{x:.2f}" for sp, x in zip(spacings, score, strict=True)},
                "best": spacings[int(np.argmin(score))]})
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--calls", default="10,20,50")
  parser.add_argument("--out", default="benchmarks/results/spacing_gaussian.json")
  parser.add_argument("--digits", help="benchmarks/solvers.py's JSON: also name each sampler's best spacing")
  args = common.parse_args(parser)
  calls = [int(c) for c in args.calls.split(",")]
  betas = schedules.get_beta_schedule("linear", num_diffusion_steps=1000)
  start, rows = time.time(), []
  for law, (m, s) in LAWS.items():
    for label, (sampler, order) in SAMPLERS.items():
      errors = {}
      for spacing in schedules.SPACINGS:
        for c in calls:
          errors[(spacing, c)] = relative_w2(betas, sampler, order, spacing, c, m, s)
      for spacing in schedules.SPACINGS:
        best = [min(schedules.SPACINGS, key=lambda sp: errors[(sp, c)]) == spacing for c in calls]
        rows.append({"law": law, "sampler": label, "spacing": spacing,
                     **{f"{c} calls": (f"{errors[(spacing, c)]:.3g}" + (" *" if b else "")) for c, b in
                        zip(calls, best, strict=True)}})
  common.report(f"Relative W2 error of the sampled law, Gaussian data, exact eps, T = 1000 (* best spacing; "
                f"{time.time() - start:.0f} s)", rows, ["law", "sampler", "spacing", *(f"{c} calls" for c in calls)],
                args.out)
  if args.digits:
    with open(args.digits) as f:
      digits = json.load(f)["rows"]
    best = best_spacings(rows, digits, calls)
    spacings = [k for k in best[0] if k not in ("sampler", "best")]
    common.report("Mean log(figure / best) per spacing, digits and Gaussian halves; the least is the default", best,
                  ["sampler", *spacings, "best"], os.path.splitext(args.out)[0] + "_best.json")


if __name__ == "__main__":
  main()

"""`--mode sample` (compiled sampler over all devices -> PNG grid and .npz), `--mode eval` (bits/dim, quality)
and `--mode export` (the parameters as a diffusers-format directory).

All start from `experiment.build` and the latest checkpoint of the workdir,
read-only, or (sample and eval) from the diffusers-format directory
`config.pretrained`; none goes through the training loop.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from diffusion_jax import files, losses, solvers
from diffusion_jax.run import compiler, data, experiment, images, parallel, quality, sampler, transfer
from diffusion_jax.run.experiment import Experiment
from diffusion_jax.run.logs import Progress


def restore(config: ml_collections.ConfigDict, workdir: str, info: data.DatasetInfo | None = None
            ) -> tuple[Experiment, Any, int | None]:
  """Validated experiment and the parameters to use: `config.pretrained`'s, or the workdir's latest checkpoint's.

  Returns:
    (experiment, parameters, step: None for a pretrained directory).

  Raises:
    FileNotFoundError: no checkpoint in `workdir` (and no `config.pretrained`).
  """
  exp = experiment.build(config, workdir, info)
  return (exp, *load_params(exp, workdir))


def load_params(exp: Experiment, workdir: str) -> tuple[Any, int | None]:
  """(the parameters to sample with, step: None for `config.pretrained`'s) of a built experiment."""
  if exp.config.pretrained is not None:
    os.makedirs(workdir, exist_ok=True)  # for what the mode writes
    return transfer.load_pretrained(exp), None
  state, step = experiment.restore_latest(exp, workdir)
  return experiment.sampling_params(state, exp.config), step


def tag(step: int | None) -> str:
  """The file-name tag of a checkpoint: its step, or `pretrained`."""
  return "pretrained" if step is None else f"{step:08d}"


def params_source(config: ml_collections.ConfigDict, step: int | None) -> str:
  """Where the parameters come from, for log lines."""
  if step is None:
    return f"the pretrained {config.pretrained}"
  return f"step {step} ({'EMA' if config.sampling.use_ema else 'raw'} parameters)"


def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Draws `sampling.num_samples` from the latest checkpoint (or `config.pretrained`); writes
  `samples_<step>.png` and `.npz` (`samples_pretrained.*`).

  Returns:
    Path of the `.npz` (uint8 images or float32 points under `samples`).
  """
  info = transfer.pretrained_info(config) if config.pretrained is not None else None
  exp, params, step = restore(config, workdir, info)
  sc = config.sampling
  logging.info("Sampling %d from %s with %s; compiling the sampler...", sc.num_samples, params_source(config, step),
               sampler.describe_sampler(config))
  labels = None
  if exp.labels is not None:
    labels = exp.labels.labels(sc.num_samples)
    logging.info("Labels %s in turn, guidance scale %g: a block of rows per label in the grid.", sc.labels,
                 sc.guidance_scale)
  samples = sampler.Sampler(exp, sc.batch_size)(params, sc.num_samples, jax.random.key(sc.seed), labels=labels)
  stem = os.path.join(workdir, f"samples_{tag(step)}")
  if jax.process_index() == 0:
    stored = data.to_uint8(samples) if exp.info.is_image else samples.astype(np.float32)
    np.savez_compressed(stem + ".npz", samples=stored, **({} if labels is None else {"labels": labels}))
    shown = images.save_samples(samples, stem + ".png", exp.info, config.data.dataset, labels=labels)
    logging.info("Wrote %d samples to %s.npz and a grid of %s to %s.png", len(samples), stem,
                 "all" if shown == len(samples) else f"the first {shown}", stem)
  return stem + ".npz"


def export(config: ml_collections.ConfigDict, workdir: str, directory: str | None = None) -> str:
  """`--mode export`: the latest checkpoint's sampling parameters (`sampling.use_ema`) as a diffusers-format
  directory, loadable with `diffusers.UNet2DModel.from_pretrained` and `DDPMScheduler.from_pretrained`.

  Args:
    config: the run's config.
    workdir: the trained workdir.
    directory: where to write; `<workdir>/diffusers` when None.

  Returns:
    The directory.
  """
  info = transfer.pretrained_info(config) if config.pretrained is not None else None
  exp, params, step = restore(config, workdir, info)
  directory = directory or os.path.join(workdir, "diffusers")
  if jax.process_index() == 0:
    transfer.export_pretrained(exp, params, directory)
    logging.info("Exported %s to %s (diffusers UNet2DModel + DDPMScheduler).", params_source(config, step), directory)
  return directory


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """`--mode eval`: bits/dim on `eval.split` (images), and the quality figure of `eval.quality_samples` samples.

  Returns:
    Dict with `bpd` (see `evaluate_bpd`; images only) and `quality` (see `evaluate_quality`; when
    `eval.quality_samples` > 0).
  """
  exp, params, step = restore(config, workdir)
  scorer = None
  if config.eval.quality_samples:
    metric = quality.check_quality_config(config, exp.info)  # before anything compiles
    scorer = quality.Scorer(config, exp.info, exp.mesh, metric)
  result = {}
  if exp.info.is_image:
    result["bpd"] = evaluate_bpd(exp, params, step, workdir)
  if scorer is not None:
    result["quality"] = evaluate_quality(exp, params, step, workdir, scorer)
  return result


def evaluate_quality(exp: Experiment, params: Any, step: int | None, workdir: str,
                     scorer: quality.Scorer) -> dict[str, Any]:
  """`eval.quality_samples` samples (per `config.sampling`) of `params` scored against the train split, beside
  the baseline; written to `quality_<step>.json` (`quality_pretrained.json` for step None).

  A class-conditional model draws every class in turn, at each guidance scale of `eval.guidance_scales`
  (or `sampling.guidance_scale`); with several scales the figures also go to `guidance_<step>.png`, a plot
  of each figure against w.

  Returns:
    Dict with `figures` (with several scales: `{w: figures}`), `baseline`, `metric`, `num_samples`.
  """
  config = exp.config
  K = experiment.num_classes(exp)
  scales = [config.sampling.guidance_scale] if K is None or config.eval.guidance_scales is None else [
      float(w) for w in config.eval.guidance_scales]
  labels = None if K is None else exp.labels.every_class(scorer.num_samples)
  by_scale = {}
  for w in scales:
    draw = sampler.Sampler(exp, config.sampling.batch_size, w)
    samples = draw(params, scorer.num_samples, jax.random.key(config.sampling.seed),
                   "quality samples" + ("" if K is None else f" (w = {w:g})"), labels)
    by_scale[w] = scorer.score(samples, labels=labels)
    logging.info("Quality of %s (%d samples, %s%s): %s", params_source(config, step), scorer.num_samples,
                 sampler.describe_sampler(config),
                 "" if K is None else f", guidance scale {w:g}", scorer.report(by_scale[w]))
  figures = by_scale[scales[0]] if len(scales) == 1 else by_scale
  if jax.process_index() == 0:
    path = os.path.join(workdir, f"quality_{tag(step)}.json")
    scorer.write(path, figures, step=step, pretrained=config.pretrained, sampler=config.sampling.sampler,
                 sampling_steps=sampler.sampling_steps(config), spacing=sampler.spacing(config),
                 order=config.sampling.order if config.sampling.sampler in solvers.SOLVERS else None,
                 use_ema=config.sampling.use_ema,
                 guidance_scales=None if K is None else scales)
    logging.info("Wrote %s", path)
    if len(scales) > 1:
      logging.info("Guidance scale sweep:\n%s", guidance_table(by_scale, scorer.baseline))
      plot = os.path.join(workdir, f"guidance_{tag(step)}.png")
      names = quality.headline(by_scale[scales[0]])
      images.save_line_plots(scales, {k: [f[k] for f in by_scale.values()] for k in names}, plot,
                             x_label="guidance scale w", baselines=scorer.baseline)
      logging.info("Wrote %s", plot)
  return {"figures": figures, "baseline": scorer.baseline, "metric": scorer.metric, "num_samples": scorer.num_samples}


def guidance_table(by_scale: dict[float, dict[str, float]], baseline: dict[str, float]) -> str:
  """A plain-text table: one row per guidance scale w, one column per figure (+- its spread), and real data's row."""
  names = quality.headline(next(iter(by_scale.values())))
  rows = [["w", *names]] + [[f"{w:g}", *(quality.with_spread(f, k) for k in names)] for w, f in by_scale.items()]
  rows.append(["real data", *(quality.with_spread(baseline, k) if k in baseline else "-" for k in names)])
  widths = [max(len(r[i]) for r in rows) for i in range(len(names) + 1)]
  return "\n".join("  ".join(c.rjust(n) for c, n in zip(r, widths)) for r in rows)


def evaluate_bpd(exp: Experiment, params: Any, step: int | None, workdir: str) -> dict[str, Any]:
  """The full variational bound of `params` on `eval.split` in bits/dim (a class-conditional model's given each
  example's label); written to `eval_<split>_<step>.json` (`eval_<split>_pretrained.json` for step None).

  Returns:
    Dict with `bpd` (mean total), `prior_bpd`, `decoder_bpd` (L_0), `num_examples`,
    and `terms_bpd` (mean L_t for every t).
  """
  config = exp.config
  ec = config.eval
  T = exp.schedule.num_diffusion_steps
  progress = Progress()
  conditional = experiment.num_classes(exp) is not None

  def bound(params: Any, schedule: Any, x: jax.Array, labels: jax.Array | None,
            key: jax.Array) -> losses.VariationalBound:
    return losses.variational_bound(
        schedule, model_fn=experiment.model_fn(exp.model, params, labels=labels), x_start=data.to_model_input(x),
        key=key, model_mean_type=config.diffusion.model_mean_type, model_var_type=config.diffusion.model_var_type,
        clip_denoised=False, timesteps_per_call=ec.timesteps_per_call, progress=progress)

  bound = compiler.jit(bound)
  n = data.num_examples(config, exp.info, ec.split)
  num_batches = -(-min(n, ec.num_examples or n) // ec.batch_size)
  logging.info("Bits/dim on %s: %d batches of %d, %d timesteps each; compiling the bound...", ec.split,
               num_batches, ec.batch_size, T)
  progress.start(f"eval bits/dim on {ec.split}", num_batches * T, unit="timesteps of a batch")
  totals = {"total": 0.0, "prior": 0.0, "terms": 0.0}
  count, start = 0.0, time.time()
  for b, batch in zip(range(num_batches), data.eval_batches(config, exp.info, ec.split, ec.batch_size)):
    progress.offset = b * T
    keys = ["x", "mask"] + (["label"] if conditional else [])  # a conditional model's bound given the labels
    arrays = parallel.global_batch({k: batch[k] for k in keys}, exp.mesh)
    vb = bound(params, exp.schedule, arrays["x"], arrays.get("label"),
               jax.random.fold_in(jax.random.key(config.seed), b))
    mask = parallel.gather(arrays["mask"])
    totals["total"] += float((parallel.gather(vb.total_bpd) * mask).sum())
    totals["prior"] += float((parallel.gather(vb.prior_bpd) * mask).sum())
    totals["terms"] = totals["terms"] + (parallel.gather(vb.terms_bpd) * mask[:, None]).sum(0)
    count += float(mask.sum())
    logging.info("eval batch %d/%d: %d examples, running bpd %.4f", b + 1, num_batches, int(count),
                 totals["total"] / count)
  terms = np.asarray(totals["terms"]) / count
  result = {"step": step, "pretrained": config.pretrained, "split": ec.split, "num_examples": int(count),
            "bpd": totals["total"] / count, "prior_bpd": totals["prior"] / count, "decoder_bpd": float(terms[0]),
            "terms_bpd": [float(v) for v in terms]}
  if jax.process_index() == 0:
    path = os.path.join(workdir, f"eval_{ec.split}_{tag(step)}.json")
    files.write_json(path, result)
    logging.info("bits/dim on %s (%d examples, %s, %.0f s): %.4f; wrote %s", ec.split, int(count),
                 params_source(config, step), time.time() - start, result["bpd"], path)
  return result

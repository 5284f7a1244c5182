"""`--mode sample` (compiled sampler over all devices -> PNG grid and .npz) and `--mode eval` (bits/dim)."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from diffusion_jax import compiler, data, images, losses, parallel, train
from diffusion_jax.checkpoint import Checkpointer


def _restore(config: ml_collections.ConfigDict, workdir: str) -> tuple[train.Setup, train.TrainState, int]:
  """Validated setup and the latest checkpoint of `workdir`; FileNotFoundError if there is none."""
  s = train.setup(config, workdir)
  ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
  ckpt = Checkpointer(workdir, read_only=True) if os.path.isdir(ckpt_dir) else None
  step = None if ckpt is None else ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"No complete checkpoint in {ckpt_dir}: train first with "
                            f"--mode train --workdir {workdir}.")
  state, _ = ckpt.restore(train.abstract_state(s, config))
  ckpt.close()
  return s, state, step


def _params(state: train.TrainState, config: ml_collections.ConfigDict) -> Any:
  return state.ema_params if config.sampling.use_ema else state.params


def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Draws `sampling.num_samples` from the latest checkpoint; writes `samples_<step>.png` and `.npz`.

  Returns:
    Path of the `.npz` (uint8 images or float32 points under `samples`).
  """
  s, state, step = _restore(config, workdir)
  sc = config.sampling
  draw = train.make_sample_fn(s, config, sc.batch_size)
  params = _params(state, config)
  key = jax.random.key(sc.seed)
  num_batches = -(-sc.num_samples // sc.batch_size)
  out, start = [], time.time()
  for b in range(num_batches):
    out.append(parallel.gather(draw(params, jax.random.fold_in(key, b))))
    if jax.process_index() == 0:
      done = b + 1
      eta = (time.time() - start) / done * (num_batches - done)
      sys.stderr.write(f"\rsampling: batch {done}/{num_batches} [{'#' * (20 * done // num_batches):<20}] "
                       f"ETA {eta:.0f}s")
      sys.stderr.flush()
  if jax.process_index() == 0:
    sys.stderr.write("\n")
  samples = np.concatenate(out)[: sc.num_samples]
  stem = os.path.join(workdir, f"samples_{step:08d}")
  if jax.process_index() == 0:
    stored = data.to_uint8(samples) if s.info.is_image else samples.astype(np.float32)
    np.savez_compressed(stem + ".npz", samples=stored)
    images.save_samples(samples[:256], stem + ".png", s.info, config.data.dataset)
    logging.info("Wrote %d samples to %s.npz and a grid to %s.png", len(samples), stem, stem)
  return stem + ".npz"


def evaluate_bpd(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The full variational bound on `eval.split` in bits/dim; written to `eval_<split>_<step>.json`.

  Returns:
    Dict with `bpd` (mean total), `prior_bpd`, `decoder_bpd` (L_0), `num_examples`,
    and `terms_bpd` (mean L_t for every t).
  """
  s, state, step = _restore(config, workdir)
  if not s.info.is_image:
    raise ValueError(f"--mode eval computes bits/dim of images; data.dataset = {config.data.dataset!r} is not one.")
  ec = config.eval
  params = _params(state, config)

  @functools.partial(jax.jit, compiler_options=compiler.compiler_options())
  def bound(params: Any, schedule: Any, x: jax.Array, key: jax.Array) -> losses.VariationalBound:
    return losses.variational_bound(
        train.model_fn(s.model, params), schedule, data.to_model_input(x), key,
        model_mean_type=config.diffusion.model_mean_type, model_var_type=config.diffusion.model_var_type,
        clip_denoised=False, timesteps_per_call=ec.timesteps_per_call)

  totals = {"total": 0.0, "prior": 0.0, "terms": 0.0}
  count = 0.0
  for b, batch in enumerate(data.eval_batches(config, ec.split, ec.batch_size)):
    if ec.num_examples and count >= ec.num_examples:
      break
    arrays = parallel.global_batch({"x": batch["x"], "mask": batch["mask"]}, s.mesh)
    vb = bound(params, s.schedule, arrays["x"], jax.random.fold_in(jax.random.key(config.seed), b))
    mask = parallel.gather(arrays["mask"])
    totals["total"] += float((parallel.gather(vb.total_bpd) * mask).sum())
    totals["prior"] += float((parallel.gather(vb.prior_bpd) * mask).sum())
    totals["terms"] = totals["terms"] + (parallel.gather(vb.terms_bpd) * mask[:, None]).sum(0)
    count += float(mask.sum())
    logging.info("eval batch %d: %d examples, running bpd %.4f", b, int(count), totals["total"] / count)
  terms = np.asarray(totals["terms"]) / count
  result = {"step": step, "split": ec.split, "num_examples": int(count), "bpd": totals["total"] / count,
            "prior_bpd": totals["prior"] / count, "decoder_bpd": float(terms[0]),
            "terms_bpd": [float(v) for v in terms]}
  if jax.process_index() == 0:
    path = os.path.join(workdir, f"eval_{ec.split}_{step:08d}.json")
    with open(path, "w") as f:
      json.dump(result, f, indent=2)
    logging.info("bits/dim on %s (%d examples, step %d): %.4f; wrote %s", ec.split, int(count), step,
                 result["bpd"], path)
  return result

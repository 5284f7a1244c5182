"""The compiled sampler of a run: `config.sampling` turned into one jitted program, drawn in batches.

`make_sampler` builds jit(params, key[, labels]) for one batch size; `Sampler` draws any number of samples
with it, batch by batch, with progress lines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion_jax import sampling, schedules, solvers
from diffusion_jax.checks import ProgressFn
from diffusion_jax.run import compiler, data, parallel
from diffusion_jax.run.experiment import Experiment, labelled_model_fn, model_fn, num_classes
from diffusion_jax.run.logs import Progress


def make_sampler(exp: Experiment, batch_size: int, progress: ProgressFn | None = None,
                 guidance_scale: float | None = None) -> Callable[..., jax.Array]:
  """jit(params, key[, labels]) -> samples of shape `(batch_size, *shape)`, sharded over the mesh, per
  `config.sampling`.

  Args:
    exp: the experiment.
    batch_size: samples per call; divisible by the number of devices.
    progress: host function the compiled chain reports its steps done to (`logs.Progress`).
    guidance_scale: a class-conditional model's w; `sampling.guidance_scale` when None.

  Returns:
    The sampler; samples are in [-1, 1] for images (clipped x_0 predictions) or points. A
    class-conditional model's sampler takes int labels of shape `(batch_size,)`.
  """
  sharding = parallel.batch_sharding(exp.mesh)
  shape = (batch_size, *exp.info.shape)
  sc, dc = exp.config.sampling, exp.config.diffusion
  clip = sc.clip_denoised and exp.info.is_image
  timesteps = sampling_timesteps(exp)
  steps: schedules.DiffusionSchedule | solvers.SolverTable = exp.schedule
  if sc.sampler == "ancestral" and len(timesteps) != exp.schedule.num_diffusion_steps:
    steps = schedules.respace(exp.betas, timesteps=timesteps)
  elif sc.sampler in solvers.SOLVERS:
    steps = solvers.solver_table(exp.betas, timesteps=timesteps, solver=sc.sampler, order=sc.order)
  K = num_classes(exp)
  w = sc.guidance_scale if guidance_scale is None else guidance_scale

  def draw(params: Any, steps: schedules.DiffusionSchedule | solvers.SolverTable, key: jax.Array,
           labels: jax.Array | None) -> jax.Array:
    if K is None:
      fn = model_fn(exp.model, params)
    else:
      fn = sampling.classifier_free_guidance(
          labelled_model_fn(exp.model, params), labels=labels, null_label=K, guidance_scale=w,
          learned_variance=dc.model_var_type == "learned_range")
    common = dict(model_mean_type=dc.model_mean_type, clip_denoised=clip, sharding=sharding, progress=progress)
    if sc.sampler == "ddim":
      return sampling.ddim_sample(steps, model_fn=fn, shape=shape, key=key, timesteps=timesteps, eta=sc.eta, **common)
    if sc.sampler in solvers.SOLVERS:
      return solvers.solver_sample(steps, model_fn=fn, shape=shape, key=key, **common)
    return sampling.ancestral_sample(
        steps, model_fn=fn, shape=shape, key=key, model_var_type=dc.model_var_type, **common)

  jitted = compiler.jit(draw, out_shardings=sharding)

  def sampler(params: Any, key: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    if (labels is None) != (K is None):
      raise ValueError("a class-conditional model samples with labels (shape (batch,)), an unconditional one "
                       f"without; this model has num_classes = {K}, labels = {labels}.")
    if labels is not None:
      labels = jnp.asarray(labels, jnp.int32)
      if labels.shape != (batch_size,) or int(labels.min()) < 0 or int(labels.max()) > K:
        raise ValueError(f"labels must be ints in [0, {K}] (K = {K} is the null label) of shape ({batch_size},).")
      labels = jax.device_put(labels, sharding)
    return jitted(params, steps, key, labels)
  return sampler


def sampling_steps(config: ml_collections.ConfigDict) -> int:
  """Network calls per sample under `config.sampling`."""
  return config.sampling.num_steps or config.diffusion.num_diffusion_steps


def sampling_timesteps(exp: Experiment) -> np.ndarray:
  """The timesteps `config.sampling` visits (`num_steps` of `spacing`), first step first."""
  return schedules.sampling_timesteps(
      exp.betas, num_steps=sampling_steps(exp.config), spacing=exp.config.sampling.spacing)


def describe_sampler(config: ml_collections.ConfigDict) -> str:
  """`config.sampling`'s sampler in words, e.g. `unipc (order 2), 20 logsnr steps`."""
  sc = config.sampling
  order = f" (order {sc.order})" if sc.sampler in solvers.SOLVERS else ""
  return f"{sc.sampler}{order}, {sampling_steps(config)} {sc.spacing} steps"


class Sampler:
  """Draws any number of samples in batches of one compiled sampler, with progress lines.

  Batch `b` uses `fold_in(key, b)`, so the samples do not depend on the number of devices.
  """

  def __init__(self, exp: Experiment, batch_size: int, guidance_scale: float | None = None):
    """Compiles (on first use) the sampler of `exp.config.sampling` for batches of `batch_size` (and guidance w)."""
    data.check_batch_divisibility(batch_size, "batch_size")
    self.batch_size = batch_size
    self.steps = sampling_steps(exp.config)
    self.labels = exp.labels
    self.progress = Progress()
    self._draw = make_sampler(exp, batch_size, self.progress, guidance_scale)

  def __call__(self, params: Any, num_samples: int, key: jax.Array, label: str = "sampling",
               labels: np.ndarray | None = None) -> np.ndarray:
    """`num_samples` samples as float32 numpy of shape `(num_samples, *info.shape)`, on every host.

    Args:
      params: the parameters to sample with (e.g. the EMA parameters).
      num_samples: how many.
      key: PRNG key.
      label: what the progress lines call this.
      labels: a class-conditional model's class of each sample, shape `(num_samples,)`; None: the classes of
        `sampling.labels` in turn (`LabelLayout.labels`).
    """
    if self.labels is not None and labels is None:
      labels = self.labels.labels(num_samples)
    num_batches = -(-num_samples // self.batch_size)
    if labels is not None:  # the last batch is filled up with the last label
      labels = np.asarray(labels, np.int32)
      if labels.shape != (num_samples,):
        raise ValueError(f"labels must have shape ({num_samples},), got {labels.shape}.")
      labels = np.pad(labels, (0, num_batches * self.batch_size - num_samples), mode="edge")
    self.progress.start(f"{label} ({num_samples} samples, {self.steps} steps each)", num_batches * self.steps)
    out = []
    for b in range(num_batches):
      self.progress.offset = b * self.steps
      y = None if labels is None else labels[b * self.batch_size:(b + 1) * self.batch_size]
      out.append(parallel.gather(self._draw(params, jax.random.fold_in(key, b), y)))
    return np.concatenate(out)[:num_samples]

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

from diffusion_jax import editing, guidance, karras, sampling, schedules, solvers
from diffusion_jax.checks import ProgressFn
from diffusion_jax.diffusion import ModelFn
from diffusion_jax.run import compiler, data, parallel
from diffusion_jax.run.experiment import Experiment, labelled_model_fn, model_fn, num_classes
from diffusion_jax.run.logs import Progress

# Each sampler's spacing when `sampling.spacing` is None: the best measured for it (BENCHMARKS.md, "Each sampler's
# spacing"; `benchmarks/spacing.py --digits`): on the digits job's dataset FID at 10, 20 and 50 calls and, for the
# deterministic samplers, on Gaussian data's exact law.
DEFAULT_SPACINGS = {"ancestral": "trailing", "ddim": "quadratic", "dpm_solver++": "logsnr", "unipc": "logsnr",
                    "heun": "quadratic", "euler": "quadratic"}
# What a sampler steps through: the (respaced) schedule, or a solver's table of weights.
Steps = schedules.DiffusionSchedule | solvers.SolverTable | karras.KarrasTable


def spacing(config: ml_collections.ConfigDict) -> str:
  """`sampling.spacing`, or the sampler's default (`DEFAULT_SPACINGS`) when it is None."""
  return config.sampling.spacing or DEFAULT_SPACINGS[config.sampling.sampler]


def sampling_steps(config: ml_collections.ConfigDict) -> int:
  """Network calls per sample under `config.sampling`."""
  return config.sampling.num_steps or config.diffusion.num_diffusion_steps


def sampling_timesteps(exp: Experiment, start: int | None = None) -> np.ndarray:
  """The timesteps `config.sampling` visits, first step first: `num_steps` calls of its spacing (Heun: calls // 2 + 1
  steps); from `start` down (SDEdit, at most start + 1 steps) when given."""
  calls = sampling_steps(exp.config)
  n = calls // 2 + 1 if exp.config.sampling.sampler == "heun" else calls
  if start is None:
    return schedules.sampling_timesteps(exp.betas, num_steps=n, spacing=spacing(exp.config))
  return editing.sdedit_timesteps(exp.betas, start=start, num_steps=min(n, start + 1), spacing=spacing(exp.config))


def network_calls(config: ml_collections.ConfigDict, timesteps: np.ndarray) -> int:
  """Network calls per sample of `config.sampling` on `timesteps`: one a step; Heun two a step but the last, at most
  `num_steps`."""
  n = len(timesteps)
  return min(sampling_steps(config), 2 * n - 1) if config.sampling.sampler == "heun" else n


def sampler_steps(exp: Experiment, timesteps: np.ndarray) -> Steps:
  """What the sampler of `config.sampling` steps through on `timesteps`, built on the host."""
  sc = exp.config.sampling
  if sc.sampler == "ancestral" and not np.array_equal(timesteps, np.arange(exp.schedule.num_diffusion_steps)[::-1]):
    return schedules.respace(exp.betas, timesteps=timesteps)
  if sc.sampler in solvers.SOLVERS:
    return solvers.solver_table(exp.betas, timesteps=timesteps, solver=sc.sampler, order=sc.order)
  if sc.sampler in karras.SAMPLERS:
    calls = network_calls(exp.config, timesteps) if sc.sampler == "heun" else None
    return karras.karras_table(exp.betas, timesteps=timesteps, sampler=sc.sampler, calls=calls, churn=sc.churn,
                               churn_sigma_min=sc.churn_sigma_min,
                               churn_sigma_max=float("inf") if sc.churn_sigma_max is None else sc.churn_sigma_max,
                               churn_noise=sc.churn_noise)
  return exp.schedule


def guided_model_fn(exp: Experiment, params: Any, labels: jax.Array | None, guidance_scale: float) -> ModelFn:
  """The network as `model_fn(x_t, t)`: a class-conditional one guided per `config.sampling` at `guidance_scale`."""
  if labels is None:
    return model_fn(exp.model, params)
  sc = exp.config.sampling
  return guidance.classifier_free_guidance(
      labelled_model_fn(exp.model, params), labels=labels, null_label=num_classes(exp), guidance_scale=guidance_scale,
      learned_variance=exp.config.diffusion.model_var_type == "learned_range", rescale=sc.guidance_rescale,
      interval=None if sc.guidance_interval is None else tuple(sc.guidance_interval))


def run_sampler(exp: Experiment, steps: Steps, fn: ModelFn, *, shape: tuple[int, ...], key: jax.Array,
                timesteps: np.ndarray, progress: ProgressFn | None = None, x_T: jax.Array | None = None,
                inpaint: sampling.Inpainting | None = None) -> jax.Array:
  """The sampler of `config.sampling` on `steps` (traced: call it inside a jitted function), sharded over the mesh.

  Args:
    exp: the experiment.
    steps: from `sampler_steps`, passed into the jitted function as an argument.
    fn: the network (`guided_model_fn`).
    shape: `(batch, *info.shape)`.
    key: PRNG key.
    timesteps: the visited steps (DDIM reads them).
    progress: host function the chain reports its steps done to.
    x_T: the start (SDEdit, a decoded latent), or None for N(0, I).
    inpaint: the known region, or None.

  Returns:
    The samples, in [-1, 1] for images (clipped x_0 predictions).
  """
  sc, dc = exp.config.sampling, exp.config.diffusion
  common = dict(model_mean_type=dc.model_mean_type, clip_denoised=sc.clip_denoised and exp.info.is_image,
                sharding=parallel.batch_sharding(exp.mesh), progress=progress, x_T=x_T, inpaint=inpaint)
  if sc.sampler == "ddim":
    return sampling.ddim_sample(steps, model_fn=fn, shape=shape, key=key, timesteps=timesteps, eta=sc.eta, **common)
  if sc.sampler in solvers.SOLVERS:
    return solvers.solver_sample(steps, model_fn=fn, shape=shape, key=key, **common)
  if sc.sampler in karras.SAMPLERS:
    return karras.karras_sample(steps, model_fn=fn, shape=shape, key=key, **common)
  return sampling.ancestral_sample(steps, model_fn=fn, shape=shape, key=key, model_var_type=dc.model_var_type,
                                   **common)


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
    The sampler; samples are images in [-1, 1] (the chain's last state clipped to the data's range, whatever
    `sampling.clip_denoised` did to the x_0 predictions on the way) or points. A class-conditional model's sampler
    takes int labels of shape `(batch_size,)`.
  """
  sharding = parallel.batch_sharding(exp.mesh)
  shape = (batch_size, *exp.info.shape)
  timesteps = sampling_timesteps(exp)
  steps = sampler_steps(exp, timesteps)
  w = exp.config.sampling.guidance_scale if guidance_scale is None else guidance_scale

  def draw(params: Any, steps: Steps, key: jax.Array, labels: jax.Array | None) -> jax.Array:
    out = run_sampler(exp, steps, guided_model_fn(exp, params, labels, w), shape=shape, key=key, timesteps=timesteps,
                      progress=progress)
    return jnp.clip(out, -1.0, 1.0) if exp.info.is_image else out

  jitted = compiler.jit(draw, out_shardings=sharding)

  def sampler(params: Any, key: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    return jitted(params, steps, key, put_labels(exp, labels, batch_size))
  return sampler


def put_labels(exp: Experiment, labels: Any, batch_size: int) -> jax.Array | None:
  """`labels` as a sharded int32 array; `ValueError` unless a class-conditional model has `(batch_size,)` labels in
  [0, K] and an unconditional one none."""
  K = num_classes(exp)
  if (labels is None) != (K is None):
    raise ValueError("a class-conditional model samples with labels (shape (batch,)), an unconditional one "
                     f"without; this model has num_classes = {K}, labels = {labels}.")
  if labels is None:
    return None
  labels = jnp.asarray(labels, jnp.int32)
  if labels.shape != (batch_size,) or int(labels.min()) < 0 or int(labels.max()) > K:
    raise ValueError(f"labels must be ints in [0, {K}] (K = {K} is the null label) of shape ({batch_size},).")
  return jax.device_put(labels, parallel.batch_sharding(exp.mesh))


def describe_sampler(config: ml_collections.ConfigDict) -> str:
  """`config.sampling`'s sampler in words, e.g. `unipc (order 2), 20 logsnr steps`."""
  sc = config.sampling
  order = f" (order {sc.order})" if sc.sampler in solvers.SOLVERS else ""
  churn = f" (churn {sc.churn:g})" if sc.sampler in karras.SAMPLERS and sc.churn else ""
  unit = "network calls" if sc.sampler == "heun" else "steps"
  return f"{sc.sampler}{order}{churn}, {sampling_steps(config)} {spacing(config)} {unit}"


class Sampler:
  """Draws any number of samples in batches of one compiled sampler, with progress lines.

  Batch `b` uses `fold_in(key, b)`, so the samples do not depend on the number of devices.
  """

  def __init__(self, exp: Experiment, batch_size: int, guidance_scale: float | None = None):
    """Compiles (on first use) the sampler of `exp.config.sampling` for batches of `batch_size` (and guidance w)."""
    data.check_batch_divisibility(batch_size, "batch_size")
    self.batch_size = batch_size
    self.steps = len(sampling_timesteps(exp))  # the compiled chain's steps, which its progress counts
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

"""Classifier-free guidance (Ho & Salimans 2022) with its rescale (Lin et al. 2024) and interval (Kynkaanniemi et
al. 2024): a wrapper of a class-conditional network that every sampler takes as its `model_fn`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion_jax.checks import is_int
from diffusion_jax.diffusion import ModelFn

# (x_t, t, labels) -> network output: a class-conditional network.
LabelledModelFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def check_guidance_scale(guidance_scale: float) -> float:
  """Raises `ValueError` unless the guidance scale w is a finite number >= 0."""
  if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not (
      0 <= guidance_scale < float("inf")):
    raise ValueError(f"guidance_scale = {guidance_scale!r} is invalid; allowed: a number w >= 0 (0: the "
                     "unconditional model, 1: the conditional one, > 1: guided).")
  return float(guidance_scale)


def check_guidance_rescale(rescale: float) -> float:
  """Raises `ValueError` unless the rescale phi is a number in [0, 1]."""
  if isinstance(rescale, bool) or not isinstance(rescale, (int, float)) or not 0 <= rescale <= 1:
    raise ValueError(f"guidance_rescale = {rescale!r} is invalid; allowed: a number phi in [0, 1] (0: plain "
                     "guidance; Lin et al. 2024 use 0.7).")
  return float(rescale)


def check_guidance_interval(interval: tuple[int, int] | None, num_diffusion_steps: int | None = None
                            ) -> tuple[int, int] | None:
  """Raises `ValueError` unless `interval` is None or timesteps (lo, hi) with 0 <= lo <= hi (< T when T is given)."""
  if interval is None:
    return None
  ok = isinstance(interval, (tuple, list)) and len(interval) == 2 and all(is_int(t) for t in interval) and (
      0 <= interval[0] <= interval[1]) and (num_diffusion_steps is None or interval[1] < num_diffusion_steps)
  if not ok:
    top = "" if num_diffusion_steps is None else f" < T = {num_diffusion_steps}"
    raise ValueError(f"guidance_interval = {interval!r} is invalid; allowed: None (every step) or timesteps "
                     f"(lo, hi) with 0 <= lo <= hi{top}, the steps that are guided.")
  return int(interval[0]), int(interval[1])


def rescale_guidance(guided: jax.Array, cond: jax.Array, rescale: float) -> jax.Array:
  """phi (std(cond) / std(guided)) guided + (1 - phi) guided, the stds per example (Lin et al. 2024, Algorithm 2).

  Args:
    guided: the guided output, shape `(batch, ...)`.
    cond: the conditional output, the same shape.
    rescale: phi in [0, 1].

  Returns:
    The rescaled output: its standard deviation per example moves by phi towards the conditional one's.
  """
  axes = tuple(range(1, guided.ndim))
  ratio = jnp.std(cond, axis=axes, keepdims=True) / jnp.std(guided, axis=axes, keepdims=True)
  return rescale * guided * ratio + (1.0 - rescale) * guided


def classifier_free_guidance(model_fn: LabelledModelFn, labels: jax.Array, null_label: int, guidance_scale: float,
                             *, learned_variance: bool = False, rescale: float = 0.0,
                             interval: tuple[int, int] | None = None) -> ModelFn:
  """out = out(x, t, null) + w (out(x, t, y) - out(x, t, null)): classifier-free guidance (Ho & Salimans 2022).

  Both predictions come from one network call on the doubled batch [x; x] with labels
  [y; null]. w = 1 is the conditional network (one call with y), w = 0 the
  unconditional one (one call with the null label). The combination weights sum to 1,
  so guiding the network's output (eps, x_0 or v) is guiding eps. With learned
  variances only the mean channels are guided; the variance channels are the
  conditional prediction's. `rescale` phi > 0 then pulls each example's standard deviation
  back towards the conditional output's (`rescale_guidance`); `interval` guides only the
  steps t with lo <= t <= hi and uses the conditional output elsewhere (Kynkaanniemi et al. 2024
  guide the middle noise levels; `karras.sigma_timestep` turns their sigmas into timesteps).

  Args:
    model_fn: `model_fn(x_t, t, labels) -> output`.
    labels: int labels y of shape `(batch,)`.
    null_label: the label of the unconditional model (the UNet's `num_classes`).
    guidance_scale: w >= 0 (a Python number: it selects the program).
    learned_variance: the output's last axis is [mean channels, variance channels].
    rescale: phi in [0, 1]; 0 is plain guidance.
    interval: the guided timesteps (lo, hi) of the network's `t`, inclusive; None guides every step.

  Returns:
    The guided `model_fn(x_t, t) -> output`.
  """
  w = check_guidance_scale(guidance_scale)
  phi = check_guidance_rescale(rescale)
  interval = check_guidance_interval(interval)
  if labels.ndim != 1:
    raise ValueError(f"labels must have shape (batch,), got {labels.shape}.")
  if w == 1.0:
    return lambda x, t: model_fn(x, t, labels)
  null = jnp.full_like(labels, null_label)
  if w == 0.0 and interval is None and phi == 0.0:
    return lambda x, t: model_fn(x, t, null)

  def combine(cond: jax.Array, uncond: jax.Array, t: jax.Array) -> jax.Array:
    guided = uncond + w * (cond - uncond)
    if phi > 0:
      guided = rescale_guidance(guided, cond, phi)
    if interval is None:
      return guided
    inside = ((t >= interval[0]) & (t <= interval[1])).reshape((-1,) + (1,) * (cond.ndim - 1))
    return jnp.where(inside, guided, cond)

  def guided(x: jax.Array, t: jax.Array) -> jax.Array:
    out = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([labels, null]))
    cond, uncond = jnp.split(out, 2)
    if not learned_variance:
      return combine(cond, uncond, t)
    (mean_c, var_c), (mean_u, _) = jnp.split(cond, 2, axis=-1), jnp.split(uncond, 2, axis=-1)
    return jnp.concatenate([combine(mean_c, mean_u, t), var_c], axis=-1)
  return guided

"""The forward process, its posterior, and the reverse-process parameterisations.

Every function is pure and works under `jax.jit`, `jax.vmap` and `jax.grad`.
Timesteps `t` are integer indices in `[0, T)`; `t = 0` is the paper's `t = 1`.
`t` is either a scalar (one step for the whole batch) or an int array of
shape `(batch,)`; per-timestep buffers broadcast over all non-batch axes.
Channels are last, so `learned_range` outputs split along the last axis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffusion_jax.schedules import DiffusionSchedule

# The network as the diffusion functions see it: `(x_t, t) -> output`, `t` an int array of shape `(batch,)`.
ModelFn = Callable[[jax.Array, jax.Array], jax.Array]

MODEL_MEAN_TYPES = ("eps", "xstart", "v")
MODEL_VAR_TYPES = ("fixed_small", "fixed_large", "learned_range")


def check_model_types(model_mean_type: str, model_var_type: str) -> None:
  """Raises `ValueError` for an unknown mean or variance parameterisation."""
  if model_mean_type not in MODEL_MEAN_TYPES:
    raise ValueError(
        f"Unknown model_mean_type {model_mean_type!r}; allowed: {', '.join(MODEL_MEAN_TYPES)}.")
  if model_var_type not in MODEL_VAR_TYPES:
    raise ValueError(
        f"Unknown model_var_type {model_var_type!r}; allowed: {', '.join(MODEL_VAR_TYPES)}.")


def extract(buffer: jax.Array, t: jax.Array, x: jax.Array) -> jax.Array:
  """buffer[t], shaped to broadcast against `x` of shape `(batch, ...)`.

  Args:
    buffer: per-timestep values, shape `(T,)`.
    t: int scalar or int array of shape `(batch,)`.
    x: the array the result multiplies.

  Returns:
    Array of shape `()` or `(batch, 1, ..., 1)` with `x.ndim` axes.
  """
  t = jnp.asarray(t)
  if not jnp.issubdtype(t.dtype, jnp.integer):
    raise ValueError(f"t must be an integer timestep index, got dtype {t.dtype}.")
  if t.ndim == 0:
    return buffer[t]
  if t.ndim != 1 or x.ndim == 0 or t.shape[0] != x.shape[0]:
    raise ValueError(
        f"t must be a scalar or have shape (batch,) = ({x.shape[0] if x.ndim else '?'},), "
        f"got t.shape = {t.shape} for x.shape = {x.shape}.")
  return buffer[t].reshape(t.shape + (1,) * (x.ndim - 1))


def _check_same_shape(**arrays: jax.Array) -> None:
  shapes = {k: jnp.shape(v) for k, v in arrays.items()}
  if len(set(shapes.values())) != 1:
    raise ValueError(f"Shapes must match, got {shapes}.")


def q_step(schedule: DiffusionSchedule, *, x_prev: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I).

  Args:
    schedule: the process.
    x_prev: x_{t-1} (x_0 when `t = 0`), shape `(batch, ...)`.
    t: timestep index in `[0, T)` (0 is the paper's t = 1).
    noise: standard normal noise, shape of `x_prev`.

  Returns:
    x_t, shape of `x_prev`.
  """
  _check_same_shape(x_prev=x_prev, noise=noise)
  beta = extract(schedule.betas, t, x_prev)
  return jnp.sqrt(1.0 - beta) * x_prev + jnp.sqrt(beta) * noise


def q_mean_variance(
    schedule: DiffusionSchedule, *, x_start: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).

  Args:
    schedule: the process.
    x_start: x_0, shape `(batch, ...)`.
    t: timestep index in `[0, T)` (0 is the paper's t = 1).

  Returns:
    (mean, variance, log_variance); the mean has the shape of `x_start`, the
    variances broadcast against it.
  """
  mean = extract(schedule.sqrt_alphas_cumprod, t, x_start) * x_start
  # From the float64-built buffer: 1 - alpha_bar in float32 cancels at small t.
  variance = jnp.square(extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_start))
  log_variance = extract(schedule.log_one_minus_alphas_cumprod, t, x_start)
  return mean, variance, log_variance


def q_sample(schedule: DiffusionSchedule, *, x_start: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, a draw from q(x_t | x_0).

  Args:
    schedule: the process.
    x_start: x_0, shape `(batch, ...)`.
    t: timestep index in `[0, T)` (0 is the paper's t = 1).
    noise: eps ~ N(0, I), shape of `x_start`.

  Returns:
    x_t, shape of `x_start`.
  """
  _check_same_shape(x_start=x_start, noise=noise)
  return (extract(schedule.sqrt_alphas_cumprod, t, x_start) * x_start
          + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_start) * noise)


def q_posterior_mean_variance(
    schedule: DiffusionSchedule, *, x_start: jax.Array, x_t: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """q(x_{t-1} | x_t, x_0) = N(c1_t x_0 + c2_t x_t, beta-tilde_t I).

  Args:
    schedule: the process.
    x_start: x_0, shape `(batch, ...)`.
    x_t: shape of `x_start`.
    t: timestep index in `[0, T)` (0 is the paper's t = 1).

  Returns:
    (mean, variance, log_variance_clipped): the log-variance at `t = 0`, where
    beta-tilde is 0, is clipped to its value at `t = 1`.
  """
  _check_same_shape(x_start=x_start, x_t=x_t)
  mean = (extract(schedule.posterior_mean_coef1, t, x_t) * x_start
          + extract(schedule.posterior_mean_coef2, t, x_t) * x_t)
  variance = extract(schedule.posterior_variance, t, x_t)
  log_variance = extract(schedule.posterior_log_variance_clipped, t, x_t)
  return mean, variance, log_variance


def predict_xstart_from_eps(schedule: DiffusionSchedule, *, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
  """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t).

  Args:
    schedule: the process.
    x_t: shape `(batch, ...)`.
    t: timestep index in `[0, T)` (0 is the paper's t = 1).
    eps: predicted noise, shape of `x_t`.

  Returns:
    Predicted x_0, shape of `x_t`.
  """
  _check_same_shape(x_t=x_t, eps=eps)
  return (extract(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t
          - extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)


def predict_eps_from_xstart(
    schedule: DiffusionSchedule, *, x_t: jax.Array, t: jax.Array, pred_xstart: jax.Array
) -> jax.Array:
  """eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t) (finite also where alpha_bar_t = 0).

  Args:
    schedule: the process.
    x_t: shape `(batch, ...)`.
    t: timestep index in `[0, T)` (0 is the paper's t = 1).
    pred_xstart: predicted x_0, shape of `x_t`.

  Returns:
    Predicted noise, shape of `x_t`.
  """
  _check_same_shape(x_t=x_t, pred_xstart=pred_xstart)
  return ((x_t - extract(schedule.sqrt_alphas_cumprod, t, x_t) * pred_xstart)
          / extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t))


def v_target(schedule: DiffusionSchedule, *, x_start: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0: the target of a v-prediction network (Salimans & Ho 2022).

  Args:
    schedule: the process.
    x_start: x_0, shape `(batch, ...)`.
    t: timestep index in `[0, T)` (0 is the paper's t = 1).
    noise: eps, shape of `x_start`.

  Returns:
    v, shape of `x_start`.
  """
  _check_same_shape(x_start=x_start, noise=noise)
  return (extract(schedule.sqrt_alphas_cumprod, t, x_start) * noise
          - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_start) * x_start)


def predict_xstart_from_v(schedule: DiffusionSchedule, *, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
  """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v.

  Args:
    schedule: the process.
    x_t: shape `(batch, ...)`.
    t: timestep index in `[0, T)` (0 is the paper's t = 1).
    v: predicted v, shape of `x_t`.

  Returns:
    Predicted x_0, shape of `x_t`.
  """
  _check_same_shape(x_t=x_t, v=v)
  return (extract(schedule.sqrt_alphas_cumprod, t, x_t) * x_t
          - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * v)


def score_from_eps(schedule: DiffusionSchedule, *, eps: jax.Array, t: jax.Array) -> jax.Array:
  """grad_x log q(x_t) = -eps / sqrt(1 - alpha_bar_t).

  Args:
    schedule: the process.
    eps: predicted noise, shape `(batch, ...)`.
    t: timestep index in `[0, T)` (0 is the paper's t = 1).

  Returns:
    The score, shape of `eps`.
  """
  return -eps / extract(schedule.sqrt_one_minus_alphas_cumprod, t, eps)


def eps_from_score(schedule: DiffusionSchedule, *, score: jax.Array, t: jax.Array) -> jax.Array:
  """eps = -sqrt(1 - alpha_bar_t) * score.

  Args:
    schedule: the process.
    score: grad_x log q(x_t), shape `(batch, ...)`.
    t: timestep index in `[0, T)` (0 is the paper's t = 1).

  Returns:
    The noise prediction, shape of `score`.
  """
  return -extract(schedule.sqrt_one_minus_alphas_cumprod, t, score) * score


class PMeanVariance(NamedTuple):
  """p(x_{t-1} | x_t) = N(mean, variance I), with the x_0 prediction behind it."""

  mean: jax.Array
  variance: jax.Array
  log_variance: jax.Array
  pred_xstart: jax.Array


def split_learned_variance(model_output: jax.Array, x_t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Splits a `learned_range` output of 2C channels into (mean output, variance values)."""
  if model_output.shape[:-1] != x_t.shape[:-1] or model_output.shape[-1] != 2 * x_t.shape[-1]:
    raise ValueError(
        "model_var_type 'learned_range' needs a model output with twice the channels of x_t: "
        f"x_t.shape = {x_t.shape}, model_output.shape = {model_output.shape}.")
  return jnp.split(model_output, 2, axis=-1)


def predict_xstart(
    schedule: DiffusionSchedule,
    *,
    model_output: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    model_mean_type: str = "eps",
    clip_denoised: bool = True,
) -> jax.Array:
  """x_0 predicted from a network's mean output (eps, x_0 or v), optionally clipped to [-1, 1].

  Args:
    schedule: the process.
    model_output: the network's mean output, shape of `x_t`.
    x_t: shape `(batch, ...)`.
    t: timestep index in `[0, T)` (0 is the paper's t = 1).
    model_mean_type: `eps`, `xstart` or `v`.
    clip_denoised: clip the prediction to [-1, 1].

  Returns:
    Predicted x_0, shape of `x_t`.
  """
  if model_mean_type not in MODEL_MEAN_TYPES:
    raise ValueError(f"Unknown model_mean_type {model_mean_type!r}; allowed: {', '.join(MODEL_MEAN_TYPES)}.")
  if model_mean_type == "eps":
    pred_xstart = predict_xstart_from_eps(schedule, x_t=x_t, t=t, eps=model_output)
  elif model_mean_type == "xstart":
    pred_xstart = model_output
  else:  # v
    pred_xstart = predict_xstart_from_v(schedule, x_t=x_t, t=t, v=model_output)
  return jnp.clip(pred_xstart, -1.0, 1.0) if clip_denoised else pred_xstart


def p_mean_variance(
    schedule: DiffusionSchedule,
    *,
    model_output: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    model_mean_type: str = "eps",
    model_var_type: str = "fixed_large",
    clip_denoised: bool = True,
) -> PMeanVariance:
  """p(x_{t-1} | x_t) = q(x_{t-1} | x_t, x_0 = pred_xstart), with sigma_t^2 from `model_var_type`.

  The mean is always the posterior mean at the predicted x_0; for `eps` models
  without clipping this equals Algorithm 2's
  1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps).

  Args:
    schedule: the process.
    model_output: network output at (x_t, t): shape of `x_t`, or twice its
      channels for `learned_range` (mean output, then variance values in [-1, 1]).
    x_t: shape `(batch, ...)`.
    t: timestep index in `[0, T)` (0 is the paper's t = 1).
    model_mean_type: what the network predicts: `eps`, `xstart` or `v`.
    model_var_type: `fixed_small` (beta-tilde_t), `fixed_large` (beta_t;
      beta-tilde_1 at t = 0) or `learned_range` (log-variance interpolated
      between log beta-tilde_t and log beta_t, Nichol & Dhariwal).
    clip_denoised: clip the predicted x_0 to [-1, 1] before taking the mean.

  Returns:
    `PMeanVariance`; mean and pred_xstart have the shape of `x_t`.
  """
  check_model_types(model_mean_type, model_var_type)
  if model_var_type == "learned_range":
    model_output, var_values = split_learned_variance(model_output, x_t)
    min_log = extract(schedule.posterior_log_variance_clipped, t, x_t)
    max_log = jnp.log(extract(schedule.betas, t, x_t))
    frac = (var_values + 1.0) / 2.0
    log_variance = frac * max_log + (1.0 - frac) * min_log
    variance = jnp.exp(log_variance)
  else:
    _check_same_shape(model_output=model_output, x_t=x_t)
    if model_var_type == "fixed_small":
      variance = extract(schedule.posterior_variance, t, x_t)
      log_variance = extract(schedule.posterior_log_variance_clipped, t, x_t)
    else:
      variance = extract(schedule.fixed_large_variance, t, x_t)
      log_variance = extract(schedule.fixed_large_log_variance, t, x_t)
    variance = jnp.broadcast_to(variance, x_t.shape)
    log_variance = jnp.broadcast_to(log_variance, x_t.shape)

  pred_xstart = predict_xstart(
      schedule, model_output=model_output, x_t=x_t, t=t, model_mean_type=model_mean_type, clip_denoised=clip_denoised)
  mean, _, _ = q_posterior_mean_variance(schedule, x_start=pred_xstart, x_t=x_t, t=t)
  return PMeanVariance(mean, variance, log_variance, pred_xstart)

"""Ancestral (DDPM, Algorithm 2 of Ho et al.) and DDIM samplers, each one `jax.lax.scan` over the reversed steps.

The step body is traced once, so compile time does not grow with T, and the
whole chain is one device program: no per-step dispatch. Every sampler takes
its schedule (or solver table) as the one positional argument and the rest by
keyword, and is traceable: `jax.jit` it with the parameters as an argument, e.g.

    @jax.jit
    def draw(params, key):
      model_fn = lambda x, t: model.apply({"params": params}, x, t)
      return ancestral_sample(schedule, model_fn=model_fn, shape=(64, 32, 32, 3), key=key)

Steps are indices `t` in `[0, T)` of the schedule (`t = 0` is the paper's
`t = 1`); the network is called with `schedule.timesteps[t]`, which differs
from `t` only for a respaced schedule. The noise of step `t` comes from
`jax.random.fold_in(key, t)`, so a sample does not depend on how the batch
is sharded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import diffusion
from diffusion_jax.checks import ProgressFn, is_int, report_progress
from diffusion_jax.diffusion import ModelFn
from diffusion_jax.schedules import DiffusionSchedule, check_timesteps

# (x_t, carried extra, step inputs, noise key) -> (x_prev, extra, pred_xstart)
StepFn = Callable[[jax.Array, Any, Any, jax.Array], tuple[jax.Array, Any, jax.Array]]
# (x_t, t, labels) -> network output: a class-conditional network.
LabelledModelFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


class Trajectory(NamedTuple):
  """Every `return_every`-th state of the chain, in sampling order (from t = T-1 down)."""

  timesteps: jax.Array  # (S,) schedule index t of each saved state
  x_t: jax.Array  # (S, *shape) the state before step t
  pred_xstart: jax.Array  # (S, *shape) the x_0 predicted at step t


def check_guidance_scale(guidance_scale: float) -> float:
  """Raises `ValueError` unless the guidance scale w is a finite number >= 0."""
  if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not (
      0 <= guidance_scale < float("inf")):
    raise ValueError(f"guidance_scale = {guidance_scale!r} is invalid; allowed: a number w >= 0 (0: the "
                     "unconditional model, 1: the conditional one, > 1: guided).")
  return float(guidance_scale)


def classifier_free_guidance(model_fn: LabelledModelFn, labels: jax.Array, null_label: int, guidance_scale: float,
                             *, learned_variance: bool = False) -> ModelFn:
  """out = out(x, t, null) + w (out(x, t, y) - out(x, t, null)): classifier-free guidance (Ho & Salimans 2022).

  Both predictions come from one network call on the doubled batch [x; x] with labels
  [y; null]. w = 1 is the conditional network (one call with y), w = 0 the
  unconditional one (one call with the null label). The combination weights sum to 1,
  so guiding the network's output (eps, x_0 or v) is guiding eps. With learned
  variances only the mean channels are guided; the variance channels are the
  conditional prediction's.

  Args:
    model_fn: `model_fn(x_t, t, labels) -> output`.
    labels: int labels y of shape `(batch,)`.
    null_label: the label of the unconditional model (the UNet's `num_classes`).
    guidance_scale: w >= 0 (a Python number: it selects the program).
    learned_variance: the output's last axis is [mean channels, variance channels].

  Returns:
    The guided `model_fn(x_t, t) -> output`.
  """
  w = check_guidance_scale(guidance_scale)
  if labels.ndim != 1:
    raise ValueError(f"labels must have shape (batch,), got {labels.shape}.")
  if w == 1.0:
    return lambda x, t: model_fn(x, t, labels)
  null = jnp.full_like(labels, null_label)
  if w == 0.0:
    return lambda x, t: model_fn(x, t, null)

  def guided(x: jax.Array, t: jax.Array) -> jax.Array:
    out = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([labels, null]))
    cond, uncond = jnp.split(out, 2)
    if not learned_variance:
      return uncond + w * (cond - uncond)
    (mean_c, var_c), (mean_u, _) = jnp.split(cond, 2, axis=-1), jnp.split(uncond, 2, axis=-1)
    return jnp.concatenate([mean_u + w * (mean_c - mean_u), var_c], axis=-1)
  return guided


def check_sample_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """`shape` as a tuple; `ValueError` unless it is `(batch, ...)` of positive integers."""
  shape = tuple(shape)
  if len(shape) < 2 or any(not is_int(d) or d < 1 for d in shape):
    raise ValueError(f"shape must be (batch, ...) of positive integers, got {shape}.")
  return shape


def _constrain(x: jax.Array, sharding: jax.sharding.Sharding | None) -> jax.Array:
  return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def _initial_state(shape: tuple[int, ...], key: jax.Array, x_T: jax.Array | None,
                   sharding: jax.sharding.Sharding | None) -> tuple[jax.Array, jax.Array]:
  """(x_T ~ N(0, I) from `key`, or the given x_T; the key of every later step's noise)."""
  init_key, noise_key = jax.random.split(key)
  if x_T is None:
    x_T = jax.random.normal(init_key, shape)
  elif x_T.shape != shape:
    raise ValueError(f"x_T must have the samples' shape {shape}, got {x_T.shape}.")
  return _constrain(x_T, sharding), noise_key


def run_chain(
    step_fn: StepFn,
    timesteps: jax.Array,
    step_inputs: Any,
    shape: tuple[int, ...],
    key: jax.Array,
    return_every: int | None,
    sharding: jax.sharding.Sharding | None,
    progress: ProgressFn | None,
    x_T: jax.Array | None = None,
    extra: Any = None,
) -> jax.Array | tuple[jax.Array, Trajectory]:
  """x_T, then `step_fn(x, extra, inputs, key) -> (x_prev, extra, pred_xstart)` over the steps.

  Args:
    step_fn: one step; `extra` is what a multistep solver carries besides x (None for one-step samplers).
    timesteps: `(n,)` int schedule index of each step, first step first (the noise key and the trajectory's).
    step_inputs: pytree of arrays with leading axis n, one slice per step.
    shape, key, return_every, sharding, progress, x_T: as in `ancestral_sample`.
    extra: the initial `extra`.
  """
  num = timesteps.shape[0]
  x_T, noise_key = _initial_state(shape, key, x_T, sharding)
  if return_every is not None and (not is_int(return_every) or return_every < 1):
    raise ValueError(f"return_every must be a positive integer or None, got {return_every!r}.")

  def body(carry, n_t_inputs):
    (x, extra), (n, t, inputs) = carry, n_t_inputs
    x_prev, extra, pred = step_fn(x, extra, inputs, jax.random.fold_in(noise_key, t))
    report_progress(progress, n + 1, num)
    return (_constrain(x_prev, sharding), extra), pred

  counted = (jnp.arange(num), timesteps, step_inputs)
  if return_every is None:
    (x_0, _), _ = jax.lax.scan(lambda c, xs: (body(c, xs)[0], None), (x_T, extra), counted)
    return x_0
  slots = -(-num // return_every)

  def saving_body(carry, n_t_inputs):
    state, xs, preds = carry
    n = n_t_inputs[0]
    new_state, pred = body(state, n_t_inputs)
    slot, save = n // return_every, n % return_every == 0
    xs = xs.at[slot].set(jnp.where(save, state[0], xs[slot]))
    preds = preds.at[slot].set(jnp.where(save, pred, preds[slot]))
    return (new_state, xs, preds), None

  buffers = jnp.zeros((slots, *shape), x_T.dtype)
  ((x_0, _), xs, preds), _ = jax.lax.scan(saving_body, ((x_T, extra), buffers, buffers), counted)
  return x_0, Trajectory(timesteps[::return_every], xs, preds)


def ancestral_sample(
    schedule: DiffusionSchedule,
    *,
    model_fn: ModelFn,
    shape: tuple[int, ...],
    key: jax.Array,
    model_mean_type: str = "eps",
    model_var_type: str = "fixed_large",
    clip_denoised: bool = True,
    return_every: int | None = None,
    sharding: jax.sharding.Sharding | None = None,
    progress: ProgressFn | None = None,
    x_T: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, Trajectory]:
  """Algorithm 2: x_T ~ N(0, I); x_{t-1} = mu_theta(x_t, t) + sigma_t z, with no noise at t = 0.

  With `clip_denoised` this is the stable variant: predict x_0, clip it to
  [-1, 1], take the posterior mean.

  Args:
    model_fn: traceable `model_fn(x_t, t) -> output`; `t` is an int array of
      shape `(batch,)`.
    schedule: the process (possibly respaced).
    shape: `(batch, ...)` of the samples.
    key: PRNG key.
    model_mean_type, model_var_type, clip_denoised: as in
      `diffusion.p_mean_variance`; sigma_t^2 = beta_t (`fixed_large`, the
      default) or beta-tilde_t (`fixed_small`).
    return_every: also return every k-th state and x_0 prediction.
    sharding: optional sharding of the samples (batch axis over devices).
    progress: optional host function, called from inside the scan
      (`jax.debug.callback`) with the number of steps done, about 50 times.
    x_T: start from this x_T (shape `shape`) instead of drawing it from `key`;
      `key` still gives every later step's noise.

  Returns:
    x_0 of shape `shape`, and with `return_every` a `Trajectory` as well.
  """
  diffusion.check_model_types(model_mean_type, model_var_type)
  shape = check_sample_shape(shape)

  def step(x: jax.Array, extra: None, t: jax.Array, key: jax.Array) -> tuple[jax.Array, None, jax.Array]:
    tb = jnp.full((shape[0],), t, dtype=jnp.int32)
    out = diffusion.p_mean_variance(
        schedule, model_output=model_fn(x, schedule.timesteps[tb]).astype(x.dtype), x_t=x, t=tb,
        model_mean_type=model_mean_type, model_var_type=model_var_type, clip_denoised=clip_denoised)
    noise = _constrain(jax.random.normal(key, shape, x.dtype), sharding)
    sigma = jnp.where(t > 0, jnp.exp(0.5 * out.log_variance), 0.0)
    return out.mean + sigma * noise, None, out.pred_xstart

  steps = jnp.arange(schedule.num_diffusion_steps - 1, -1, -1, dtype=jnp.int32)
  return run_chain(step, steps, steps, shape, key, return_every, sharding, progress, x_T)


def mean_output(out: jax.Array, x: jax.Array) -> jax.Array:
  """The network's output as x's dtype; `ValueError` unless it has x's shape (a mean output only)."""
  if out.shape != x.shape:
    raise ValueError(f"model_fn returned shape {out.shape} for x_t of shape {x.shape}; this sampler uses the mean "
                     "output only (for a learned_range model, drop the variance channels or use `ancestral_sample`).")
  return out.astype(x.dtype)


def ddim_sample(
    schedule: DiffusionSchedule,
    *,
    model_fn: ModelFn,
    shape: tuple[int, ...],
    key: jax.Array,
    timesteps: Sequence[int] | np.ndarray | None = None,
    eta: float = 0.0,
    model_mean_type: str = "eps",
    clip_denoised: bool = True,
    return_every: int | None = None,
    sharding: jax.sharding.Sharding | None = None,
    progress: ProgressFn | None = None,
    x_T: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, Trajectory]:
  """DDIM (Song et al. 2021): x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma z, s < t.

  sigma = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s); eta = 1
  matches the ancestral sampler with beta-tilde variances on the visited steps,
  eta = 0 is deterministic given x_T. s is the next visited step (abar_s = 1
  after the last one, where the chain returns the predicted x_0).

  Args:
    model_fn: traceable `model_fn(x_t, t) -> output` (mean output only; a
      `learned_range` model's variance channels must be dropped by the caller).
    schedule: the process; DDIM needs only its alphas_cumprod.
    shape: `(batch, ...)` of the samples.
    key: PRNG key.
    timesteps: the steps to visit, in sampling order (strictly decreasing), e.g.
      `schedules.sampling_timesteps(betas, num_steps=50, spacing="trailing")`;
      every step of `schedule` when None.
    eta: noise scale, >= 0.
    model_mean_type: `eps`, `xstart` or `v`.
    clip_denoised: clip the predicted x_0 to [-1, 1].
    return_every: also return every k-th state and x_0 prediction.
    sharding: optional sharding of the samples.
    progress: as in `ancestral_sample`.
    x_T: as in `ancestral_sample`; with eta = 0 the result is then a function of x_T alone.

  Returns:
    x_0 of shape `shape`, and with `return_every` a `Trajectory` as well.
  """
  diffusion.check_model_types(model_mean_type, "fixed_small")
  shape = check_sample_shape(shape)
  if not eta >= 0:
    raise ValueError(f"eta must be >= 0, got {eta!r}.")
  T = schedule.num_diffusion_steps
  visited = np.arange(T - 1, -1, -1, dtype=np.int32) if timesteps is None else check_timesteps(timesteps, T)
  nxt = np.append(visited[1:], -1).astype(np.int32)  # each step's successor, -1 after the last

  def step(x: jax.Array, extra: None, ts: tuple[jax.Array, jax.Array], key: jax.Array
           ) -> tuple[jax.Array, None, jax.Array]:
    t, s = ts
    tb = jnp.full((shape[0],), t, dtype=jnp.int32)
    pred_xstart = diffusion.predict_xstart(
        schedule, model_output=mean_output(model_fn(x, schedule.timesteps[tb]), x), x_t=x, t=tb,
        model_mean_type=model_mean_type, clip_denoised=clip_denoised)
    eps = diffusion.predict_eps_from_xstart(schedule, x_t=x, t=tb, pred_xstart=pred_xstart)
    abar_t = schedule.alphas_cumprod[t]
    abar_s = jnp.where(s >= 0, schedule.alphas_cumprod[jnp.maximum(s, 0)], 1.0)
    sigma = eta * jnp.sqrt((1.0 - abar_s) / (1.0 - abar_t) * (1.0 - abar_t / abar_s))
    noise = _constrain(jax.random.normal(key, shape, x.dtype), sharding)
    x_prev = (jnp.sqrt(abar_s) * pred_xstart
              + jnp.sqrt(jnp.maximum(1.0 - abar_s - sigma**2, 0.0)) * eps + sigma * noise)
    return x_prev, None, pred_xstart

  ts = jnp.asarray(visited)
  return run_chain(step, ts, (ts, jnp.asarray(nxt)), shape, key, return_every, sharding, progress, x_T)



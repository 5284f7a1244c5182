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


class Trajectory(NamedTuple):
  """Every `return_every`-th state of the chain, in sampling order (from t = T-1 down)."""

  timesteps: jax.Array  # (S,) schedule index t of each saved state
  x_t: jax.Array  # (S, *shape) the state before step t
  pred_xstart: jax.Array  # (S, *shape) the x_0 predicted at step t


class Inpainting(NamedTuple):
  """The known part of the samples: x_0 = `image` where `mask` = 1 (Lugmayr et al. 2022, "RePaint").

  After each step the sampler's state x_s (= alpha_s x_0 + sigma_s eps in law) becomes
  mask (alpha_s image + sigma_s z) + (1 - mask) x_s, z ~ N(0, I) fresh: the known region is noised to the
  state's level, so at the clean end (alpha = 1, sigma = 0) it equals `image` exactly.
  """

  image: jax.Array  # (batch, ...) the known x_0, the samples' shape (its values where mask = 0 are not read)
  mask: jax.Array  # the samples' shape, or it with a last axis of 1 (one mask for all channels); values in [0, 1]


def check_inpainting(inpaint: Inpainting | None, shape: tuple[int, ...]) -> Inpainting | None:
  """`inpaint` with a float mask; `ValueError` unless its image has the samples' `shape` and its mask that or
  `shape[:-1] + (1,)`."""
  if inpaint is None:
    return None
  if not isinstance(inpaint, Inpainting):
    raise ValueError(f"inpaint must be an Inpainting(image, mask) or None, got {type(inpaint).__name__}.")
  if tuple(inpaint.image.shape) != shape:
    raise ValueError(f"inpaint.image must have the samples' shape {shape}, got {tuple(inpaint.image.shape)}.")
  if tuple(inpaint.mask.shape) not in (shape, (*shape[:-1], 1)):
    raise ValueError(f"inpaint.mask must have shape {shape} or {(*shape[:-1], 1)} (1 known, 0 generated), got "
                     f"{tuple(inpaint.mask.shape)}.")
  return Inpainting(inpaint.image, jnp.asarray(inpaint.mask, inpaint.image.dtype))


def replace_known(x: jax.Array, inpaint: Inpainting, alpha: jax.Array, sigma: jax.Array, key: jax.Array,
                  sharding: jax.sharding.Sharding | None = None) -> jax.Array:
  """mask (alpha image + sigma z) + (1 - mask) x, z ~ N(0, I): the known region at the level (alpha, sigma).

  Args:
    x: the state, shape `(batch, ...)`.
    inpaint: the known region.
    alpha, sigma: scalars, the state's signal and noise scales.
    key: PRNG key of z.
    sharding: optional sharding of z.

  Returns:
    The state with its known region replaced.
  """
  z = _constrain(jax.random.normal(key, x.shape, x.dtype), sharding)
  return inpaint.mask * (alpha * inpaint.image + sigma * z) + (1.0 - inpaint.mask) * x


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
    inpaint: Inpainting | None = None,
    levels: tuple[jax.Array, jax.Array] | None = None,
    key_ids: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, Trajectory]:
  """x_T, then `step_fn(x, extra, inputs, key) -> (x_prev, extra, pred_xstart)` over the steps.

  Args:
    step_fn: one step; `extra` is what a multistep solver carries besides x (None for one-step samplers).
    timesteps: `(n,)` int schedule index of each step, first step first (the trajectory's).
    step_inputs: pytree of arrays with leading axis n, one slice per step.
    shape, key, return_every, sharding, progress, x_T: as in `ancestral_sample`.
    extra: the initial `extra`.
    inpaint: replace the known region after each step (`replace_known`) at `levels`.
    levels: `(alpha, sigma)`, each `(n,)`: the signal and noise scales of each step's result x_prev.
    key_ids: `(n,)` ints folded into `key` for each step's noise; `timesteps` when None.
  """
  num = timesteps.shape[0]
  x_T, noise_key = _initial_state(shape, key, x_T, sharding)
  if return_every is not None and (not is_int(return_every) or return_every < 1):
    raise ValueError(f"return_every must be a positive integer or None, got {return_every!r}.")
  inpaint = check_inpainting(inpaint, shape)
  if inpaint is not None and levels is None:
    raise ValueError("inpaint needs the levels (alpha, sigma) of every step's result.")

  def body(carry, xs):
    (x, extra), (n, key_id, inputs, level) = carry, xs
    step_key = jax.random.fold_in(noise_key, key_id)
    x_prev, extra, pred = step_fn(x, extra, inputs, step_key)
    if inpaint is not None:
      x_prev = replace_known(x_prev, inpaint, *level, jax.random.fold_in(step_key, 1), sharding)
    report_progress(progress, n + 1, num)
    return (_constrain(x_prev, sharding), extra), pred

  counted = (jnp.arange(num), timesteps if key_ids is None else key_ids, step_inputs,
             None if inpaint is None else levels)
  if return_every is None:
    (x_0, _), _ = jax.lax.scan(lambda c, xs: (body(c, xs)[0], None), (x_T, extra), counted)
    return x_0
  slots = -(-num // return_every)

  def saving_body(carry, xs):
    state, saved, preds = carry
    n = xs[0]
    new_state, pred = body(state, xs)
    slot, save = n // return_every, n % return_every == 0
    saved = saved.at[slot].set(jnp.where(save, state[0], saved[slot]))
    preds = preds.at[slot].set(jnp.where(save, pred, preds[slot]))
    return (new_state, saved, preds), None

  buffers = jnp.zeros((slots, *shape), x_T.dtype)
  ((x_0, _), saved, preds), _ = jax.lax.scan(saving_body, ((x_T, extra), buffers, buffers), counted)
  return x_0, Trajectory(timesteps[::return_every], saved, preds)


def ancestral_step(schedule: DiffusionSchedule, *, model_fn: ModelFn, x: jax.Array, t: jax.Array, key: jax.Array,
                   model_mean_type: str = "eps", model_var_type: str = "fixed_large", clip_denoised: bool = True,
                   sharding: jax.sharding.Sharding | None = None) -> tuple[jax.Array, jax.Array]:
  """x_{t-1} = mu_theta(x_t, t) + sigma_t z (no noise at t = 0): one step of Algorithm 2.

  Args:
    schedule: the process (possibly respaced); the network is called with `schedule.timesteps[t]`.
    model_fn, model_mean_type, model_var_type, clip_denoised, sharding: as in `ancestral_sample`.
    x: x_t, shape `(batch, ...)`.
    t: int scalar, the step in `[0, T)`.
    key: PRNG key of z.

  Returns:
    (x_{t-1}, the predicted x_0).
  """
  tb = jnp.full((x.shape[0],), t, dtype=jnp.int32)
  out = diffusion.p_mean_variance(
      schedule, model_output=model_fn(x, schedule.timesteps[tb]).astype(x.dtype), x_t=x, t=tb,
      model_mean_type=model_mean_type, model_var_type=model_var_type, clip_denoised=clip_denoised)
  noise = _constrain(jax.random.normal(key, x.shape, x.dtype), sharding)
  sigma = jnp.where(t > 0, jnp.exp(0.5 * out.log_variance), 0.0)
  return out.mean + sigma * noise, out.pred_xstart


def alpha_bar(alphas_cumprod: jax.Array, s: jax.Array) -> jax.Array:
  """alpha_bar_s of steps s in [-1, T); 1 for s = -1, the clean data."""
  return jnp.where(s >= 0, alphas_cumprod[jnp.maximum(s, 0)], 1.0)


def levels_after(alphas_cumprod: jax.Array, successors: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sqrt(alpha_bar_s), sqrt(1 - alpha_bar_s)) of each step's successor s; (1, 0) for s = -1, the clean data."""
  abar = alpha_bar(alphas_cumprod, successors)
  return jnp.sqrt(abar), jnp.sqrt(1.0 - abar)


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
    inpaint: Inpainting | None = None,
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
    inpaint: the known region, replaced by q_sample of its image after every step (RePaint without
      resampling; `editing.repaint_sample` resamples).

  Returns:
    x_0 of shape `shape`, and with `return_every` a `Trajectory` as well.
  """
  diffusion.check_model_types(model_mean_type, model_var_type)
  shape = check_sample_shape(shape)

  def step(x: jax.Array, extra: None, t: jax.Array, key: jax.Array) -> tuple[jax.Array, None, jax.Array]:
    x_prev, pred = ancestral_step(schedule, model_fn=model_fn, x=x, t=t, key=key, model_mean_type=model_mean_type,
                                  model_var_type=model_var_type, clip_denoised=clip_denoised, sharding=sharding)
    return x_prev, None, pred

  steps = jnp.arange(schedule.num_diffusion_steps - 1, -1, -1, dtype=jnp.int32)
  return run_chain(step, steps, steps, shape, key, return_every, sharding, progress, x_T, inpaint=inpaint,
                   levels=levels_after(schedule.alphas_cumprod, steps - 1))


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
    inpaint: Inpainting | None = None,
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
    inpaint: the known region, replaced by q_sample of its image at each visited step.

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
    abar_s = alpha_bar(schedule.alphas_cumprod, s)
    sigma = eta * jnp.sqrt((1.0 - abar_s) / (1.0 - abar_t) * (1.0 - abar_t / abar_s))
    noise = _constrain(jax.random.normal(key, shape, x.dtype), sharding)
    x_prev = (jnp.sqrt(abar_s) * pred_xstart
              + jnp.sqrt(jnp.maximum(1.0 - abar_s - sigma**2, 0.0)) * eps + sigma * noise)
    return x_prev, None, pred_xstart

  ts, successors = jnp.asarray(visited), jnp.asarray(nxt)
  return run_chain(step, ts, (ts, successors), shape, key, return_every, sharding, progress, x_T, inpaint=inpaint,
                   levels=levels_after(schedule.alphas_cumprod, successors))



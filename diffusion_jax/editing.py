"""Editing with a trained model: RePaint inpainting (Lugmayr et al. 2022), SDEdit (Meng et al. 2022) and DDIM
inversion (Song et al. 2021), each on the samplers of `sampling`, `solvers` and `karras`.

Every sampler inpaints: pass `inpaint=Inpainting(image, mask)` and the known region is replaced by q_sample of the
image after every step, so the result's known pixels equal the image. `repaint_sample` adds RePaint's resampling to
the ancestral sampler: it jumps back `jump_length` steps with the forward process and denoises again, `resample`
times, so that the generated region harmonises with the known one. SDEdit is any sampler started from
`sdedit_start` on `sdedit_timesteps`; DDIM inversion walks the deterministic DDIM chain backwards to x_T.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import diffusion, schedules
from diffusion_jax.checks import ProgressFn, is_int
from diffusion_jax.diffusion import ModelFn
from diffusion_jax.sampling import (
    Inpainting,
    Trajectory,
    alpha_bar,
    ancestral_step,
    check_inpainting,
    check_sample_shape,
    levels_after,
    mean_output,
    replace_known,
    run_chain,
)
from diffusion_jax.schedules import DiffusionSchedule, check_timesteps


def repaint_timesteps(num_steps: int, *, jump_length: int = 10, resample: int = 10) -> np.ndarray:
  """RePaint's walk over the steps: down one step at a time, and at every `jump_length`-th step (from the top) back
  up `jump_length` steps, `resample - 1` times (the reference code's `get_schedule_jump`).

  Args:
    num_steps: T, the steps of the (possibly respaced) process.
    jump_length: j >= 1, steps per jump back.
    resample: r >= 1, denoisings of each stretch (1: no jumps).

  Returns:
    int64 levels, starting at T - 1 (x_T) and ending at -1 (x_0): consecutive levels differ by one; a step down
    from level t calls the network at t, a step up draws q(x_{t+1} | x_t).
  """
  for name, value in [("num_steps", num_steps), ("jump_length", jump_length), ("resample", resample)]:
    if not is_int(value) or value < 1:
      raise ValueError(f"{name} = {value!r} is invalid; allowed: a positive integer.")
  jumps = {t: resample - 1 for t in range(0, num_steps - jump_length, jump_length)}
  t, levels = num_steps, []
  while t >= 1:
    t -= 1
    levels.append(t)
    if jumps.get(t, 0) > 0:
      jumps[t] -= 1
      levels.extend(range(t + 1, t + jump_length + 1))
      t += jump_length
  return np.array([*levels, -1], np.int64)


def repaint_sample(
    schedule: DiffusionSchedule,
    *,
    model_fn: ModelFn,
    inpaint: Inpainting,
    key: jax.Array,
    jump_length: int = 10,
    resample: int = 10,
    model_mean_type: str = "eps",
    model_var_type: str = "fixed_large",
    clip_denoised: bool = True,
    sharding: jax.sharding.Sharding | None = None,
    progress: ProgressFn | None = None,
) -> jax.Array:
  """RePaint: Algorithm 2 with the known region replaced by q_sample(image, t - 1) after each step down and
  x_{t+1} ~ N(sqrt(1 - beta_{t+1}) x_t, beta_{t+1} I) for each step up (`repaint_timesteps`).

  One `lax.scan` over the walk; a `lax.cond` calls the network only on the steps down (about T r of them for
  T steps, jump_length < T). resample = 1 is `ancestral_sample(inpaint=...)`.

  Args:
    schedule: the process (possibly respaced).
    model_fn: traceable `model_fn(x_t, t) -> output`.
    inpaint: the known region; its image's shape is the samples'.
    key: PRNG key.
    jump_length, resample: j and r of `repaint_timesteps` (the paper's 10 and 10).
    model_mean_type, model_var_type, clip_denoised, sharding, progress: as in `ancestral_sample`.

  Returns:
    x_0, the image's shape; equal to the image where the mask is 1.
  """
  diffusion.check_model_types(model_mean_type, model_var_type)
  shape = check_sample_shape(inpaint.image.shape)
  inpaint = check_inpainting(inpaint, shape)
  levels = repaint_timesteps(schedule.num_diffusion_steps, jump_length=jump_length, resample=resample)
  start, up = jnp.asarray(levels[:-1], jnp.int32), jnp.asarray(np.diff(levels) > 0)

  def step(x: jax.Array, extra: None, move: tuple[jax.Array, jax.Array], key: jax.Array
           ) -> tuple[jax.Array, None, jax.Array]:
    t, is_up = move

    def down(x: jax.Array) -> tuple[jax.Array, jax.Array]:
      x_prev, pred = ancestral_step(schedule, model_fn=model_fn, x=x, t=t, key=key, model_mean_type=model_mean_type,
                                    model_var_type=model_var_type, clip_denoised=clip_denoised, sharding=sharding)
      return replace_known(x_prev, inpaint, *levels_after(schedule.alphas_cumprod, t - 1),
                           jax.random.fold_in(key, 1), sharding), pred

    def up_step(x: jax.Array) -> tuple[jax.Array, jax.Array]:
      beta = schedule.betas[t + 1]
      return jnp.sqrt(1.0 - beta) * x + jnp.sqrt(beta) * jax.random.normal(key, shape, x.dtype), jnp.zeros_like(x)

    x_next, pred = jax.lax.cond(is_up, up_step, down, x)
    return x_next, None, pred

  return run_chain(step, start, (start, up), shape, key, None, sharding, progress,
                   key_ids=jnp.arange(len(start)))


def sdedit_timesteps(betas: np.ndarray, *, start: int, num_steps: int | None = None, spacing: str = "trailing"
                     ) -> np.ndarray:
  """The steps of SDEdit from `start`: `schedules.sampling_timesteps` of the process cut at `start` (its first T'
  = start + 1 steps: the same alpha_bar).

  Args:
    betas: float64 betas of the process, shape `(T,)`.
    start: the step in `[0, T)` the input is noised to.
    num_steps: network calls in `[1, start + 1]`; None: every step from `start` down.
    spacing: as in `schedules.sampling_timesteps`; `linspace`, `trailing`, `logsnr` and `karras` begin at `start`.

  Returns:
    Strictly decreasing int64 steps in `[0, start]`.
  """
  betas = schedules.check_betas(betas)
  check_start(start, len(betas))
  return schedules.sampling_timesteps(betas[:start + 1], num_steps=num_steps or start + 1, spacing=spacing)


def check_start(start: int, num_diffusion_steps: int) -> int:
  """Raises `ValueError` unless `start` is a step in `[0, T)`."""
  if not is_int(start) or not 0 <= start < num_diffusion_steps:
    raise ValueError(f"start = {start!r} is invalid; allowed: a step in [0, T = {num_diffusion_steps}) (small: "
                     "close to the input; T - 1: forgets it).")
  return int(start)


def sdedit_start(schedule: DiffusionSchedule, *, image: jax.Array, start: int, key: jax.Array) -> jax.Array:
  """x_start = sqrt(alpha_bar_start) image + sqrt(1 - alpha_bar_start) eps: the input noised to `start` (SDEdit).

  Run any sampler from it on `sdedit_timesteps` (as `x_T`), e.g.
  `ddim_sample(schedule, ..., timesteps=sdedit_timesteps(betas, start=s, num_steps=n), x_T=x_start)`.

  Args:
    schedule: the (original) process.
    image: x_0, shape `(batch, ...)`.
    start: the step in `[0, T)`.
    key: PRNG key of eps.

  Returns:
    x_start, the image's shape.
  """
  start = check_start(start, schedule.num_diffusion_steps)
  t = jnp.full((image.shape[0],), start, jnp.int32)
  return diffusion.q_sample(schedule, x_start=image, t=t, noise=jax.random.normal(key, image.shape, image.dtype))


def ddim_invert(
    schedule: DiffusionSchedule,
    *,
    model_fn: ModelFn,
    x_0: jax.Array,
    timesteps: Sequence[int] | np.ndarray | None = None,
    model_mean_type: str = "eps",
    return_every: int | None = None,
    sharding: jax.sharding.Sharding | None = None,
    progress: ProgressFn | None = None,
) -> jax.Array | tuple[jax.Array, Trajectory]:
  """DDIM inversion: x_b = sqrt(abar_b) x0^ + sqrt(1 - abar_b) eps^, eps^ = eps(x_a, t_b), from x_0 up to x_T.

  The deterministic DDIM chain (eta = 0) walked backwards over `timesteps`: from the clean x_0 (abar = 1) to the
  smallest step, and on to the largest; at each step the network's eps at the next step's t, taken at the current
  state x_a (as diffusers' DDIMInverseScheduler), and x0^ = (x_a - sqrt(1 - abar_a) eps^) / sqrt(abar_a). Nothing
  is clipped. `ddim_sample(schedule, ..., timesteps=timesteps, x_T=latent, clip_denoised=False)` decodes it; the
  round trip's error falls with the number of steps.

  Args:
    schedule: the process.
    model_fn: traceable `model_fn(x_t, t) -> output`, mean output only.
    x_0: the images, shape `(batch, ...)`.
    timesteps: the steps in sampling order (strictly decreasing), as for `ddim_sample`; every step when None.
    model_mean_type: `eps`, `xstart` or `v`.
    return_every, sharding, progress: as in `ancestral_sample`; a trajectory's steps are in the order walked
      (increasing), each state the one before that step.

  Returns:
    The latent x_T at `timesteps[0]`, the shape of `x_0`; with `return_every` a `Trajectory` as well.
  """
  diffusion.check_model_types(model_mean_type, "fixed_small")
  shape = check_sample_shape(x_0.shape)
  T = schedule.num_diffusion_steps
  visited = np.arange(T - 1, -1, -1) if timesteps is None else check_timesteps(timesteps, T)
  ascending = jnp.asarray(visited[::-1].copy(), jnp.int32)
  previous = jnp.asarray(np.append(-1, visited[::-1][:-1]), jnp.int32)  # the level each step leaves; -1: x_0

  def step(x: jax.Array, extra: None, ts: tuple[jax.Array, jax.Array], key: jax.Array
           ) -> tuple[jax.Array, None, jax.Array]:
    a, b = ts
    tb = jnp.full((shape[0],), b, jnp.int32)
    out = mean_output(model_fn(x, schedule.timesteps[tb]), x)
    pred_xstart = diffusion.predict_xstart(schedule, model_output=out, x_t=x, t=tb, model_mean_type=model_mean_type,
                                           clip_denoised=False)
    eps = diffusion.predict_eps_from_xstart(schedule, x_t=x, t=tb, pred_xstart=pred_xstart)
    abar_a = alpha_bar(schedule.alphas_cumprod, a)
    abar_b = schedule.alphas_cumprod[b]
    x0 = (x - jnp.sqrt(1.0 - abar_a) * eps) / jnp.sqrt(abar_a)
    return jnp.sqrt(abar_b) * x0 + jnp.sqrt(1.0 - abar_b) * eps, None, x0

  return run_chain(step, ascending, (previous, ascending), shape, jax.random.key(0), return_every, sharding, progress,
                   x_T=x_0)

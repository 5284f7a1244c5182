"""Euler and Heun (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
Algorithms 1 and 2) on the probability-flow ODE of a DDPM-trained network, one `lax.scan`.

With sigma = sqrt((1 - alpha_bar) / alpha_bar) and x^ = x_t sqrt(1 + sigma^2) = x_t / sqrt(alpha_bar), the ODE is
dx^/dsigma = (x^ - D(x^; sigma)) / sigma, D the network's x_0 prediction at x_t = x^ / sqrt(1 + sigma^2). The
network knows only its T discrete steps: D(x^; sigma) calls it at the step t whose sigma_t is nearest to sigma in
log sigma (`sigma_timestep`) and scales its input with the continuous sigma, as k-diffusion's quantised DDPM
wrapper does; at the visited steps' own sigmas (no churn) the mapping is exact. The chain visits the given
timesteps (`schedules.sampling_timesteps`, `karras` spacing: rho = 7), then sigma = 0, the clean data; its state
is x_t, in the scale of the other samplers, so x_T, trajectories and inpainting mean the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import diffusion, schedules
from diffusion_jax.checks import ProgressFn, is_int
from diffusion_jax.diffusion import ModelFn
from diffusion_jax.sampling import Inpainting, Trajectory, check_sample_shape, mean_output, run_chain
from diffusion_jax.schedules import check_timesteps
from diffusion_jax.solvers import data_prediction

SAMPLERS = ("heun", "euler")


def sigmas(betas: np.ndarray) -> np.ndarray:
  """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) of every step, float64 `(T,)` (inf where alpha_bar = 0)."""
  with np.errstate(divide="ignore", over="ignore"):
    return np.sqrt(np.expm1(-np.cumsum(np.log1p(-schedules.check_betas(betas)))))


def sigma_timestep(betas: np.ndarray, *, sigma: np.ndarray | float) -> np.ndarray:
  """The step t whose sigma_t is nearest to each `sigma` in log sigma: the network's t for a continuous sigma.

  Args:
    betas: float64 betas of the process, shape `(T,)`.
    sigma: positive sigmas, any shape (e.g. Kynkaanniemi et al.'s guidance interval (0.28, 5.42)).

  Returns:
    int64 steps in `[0, T)`, the shape of `sigma`.
  """
  sigma = np.asarray(sigma, np.float64)
  if not np.all(sigma > 0):
    raise ValueError(f"sigma must be positive, got {sigma!r}.")
  log_sigma = np.log(sigmas(betas))
  return np.abs(np.log(sigma)[..., None] - log_sigma).argmin(-1)


@flax.struct.dataclass
class KarrasTable:
  """Euler or Heun as per-step numbers, leading axis the n steps (first step first), from `karras_table`.

  Step i: x^ = x^_i + noise_i z (churn), D at (sigma_hat_i, t_hat_i), Euler to sigma_next_i; where `heun_i`, the
  trapezoidal correction with D at (sigma_next_i, t_next_i).
  """

  timesteps: jax.Array  # (n,) int32: the visited step t_i (sigma_i = sigma_{t_i})
  sigma: jax.Array  # (n,) sigma_i
  noise: jax.Array  # (n,) S_noise sqrt(sigma_hat_i^2 - sigma_i^2): the churn's noise
  sigma_hat: jax.Array  # (n,) sigma_i (1 + gamma_i)
  t_hat: jax.Array  # (n,) int32: the network's step at sigma_hat_i
  sigma_next: jax.Array  # (n,) sigma_{i+1}; 0 after the last step
  t_next: jax.Array  # (n,) int32: the network's step at sigma_next_i (read only where heun_i)
  heun: jax.Array  # (n,) bool: a second network call (Heun), never on the last step (sigma_next = 0)


def karras_table(betas: np.ndarray, *, timesteps: Sequence[int] | np.ndarray, sampler: str = "heun",
                 calls: int | None = None, churn: float = 0.0, churn_sigma_min: float = 0.0,
                 churn_sigma_max: float = float("inf"), churn_noise: float = 1.0, dtype: jnp.dtype = jnp.float32
                 ) -> KarrasTable:
  """EDM's Algorithm 2 on `timesteps`: gamma_i = min(S_churn / n, sqrt(2) - 1) where S_tmin <= sigma_i <= S_tmax.

  Computed in float64 on the host. churn = 0 is Algorithm 1 (deterministic). Heun takes 2n - 1 network calls
  for n steps (the last step, to sigma = 0, is Euler), or `calls` (its first calls - n steps are Heun's), Euler n.

  Args:
    betas: float64 betas of the process the network was trained on, shape `(T,)`.
    timesteps: the visited steps in sampling order (strictly decreasing) in `[0, T)`
      (`schedules.sampling_timesteps(betas, num_steps=n, spacing="karras")`).
    sampler: `heun` or `euler`.
    calls: Heun's network calls in `[n, 2n - 1]`; None: 2n - 1.
    churn: S_churn >= 0.
    churn_sigma_min, churn_sigma_max: S_tmin <= S_tmax, the sigmas that churn.
    churn_noise: S_noise > 0, the scale of the churn's noise.
    dtype: floating dtype of the table.

  Returns:
    The table, to pass (as an argument) to `karras_sample`.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler = {sampler!r} is unknown; allowed: {', '.join(SAMPLERS)}.")
  for name, value, ok in [("churn", churn, churn >= 0), ("churn_noise", churn_noise, churn_noise > 0),
                          ("churn_sigma_min", churn_sigma_min, 0 <= churn_sigma_min <= churn_sigma_max)]:
    if not ok:
      raise ValueError(f"{name} = {value!r} is invalid; allowed: churn >= 0, churn_noise > 0, "
                       "0 <= churn_sigma_min <= churn_sigma_max.")
  ts = check_timesteps(timesteps, len(betas))
  all_sigmas = sigmas(betas)
  sigma = all_sigmas[ts]
  if not np.isfinite(sigma[0]):
    raise ValueError(f"timestep {int(ts[0])} has alpha_bar = 0 (zero terminal SNR), where sigma is infinite: Euler "
                     "and Heun cannot start there; use ddim_sample or ancestral_sample, or start one step later.")
  n = len(ts)
  calls = (2 * n - 1 if sampler == "heun" else n) if calls is None else calls
  if not is_int(calls) or not n <= calls <= (2 * n - 1 if sampler == "heun" else n):
    raise ValueError(f"calls = {calls!r} is invalid for {sampler} on {n} steps; allowed: "
                     f"{f'[{n}, {2 * n - 1}]' if sampler == 'heun' else n}.")
  churning = (sigma >= churn_sigma_min) & (sigma <= churn_sigma_max)
  gamma = np.where(churning, min(churn / n, np.sqrt(2.0) - 1.0), 0.0)
  sigma_hat = sigma * (1.0 + gamma)
  t_hat = np.where(gamma > 0, sigma_timestep(betas, sigma=sigma_hat), ts)
  sigma_next = np.append(sigma[1:], 0.0)
  # Heun's steps: the first calls - n (all but the last, to sigma = 0, for 2n - 1 calls). Given one call less, the
  # next-to-last step is Euler's: on Gaussian data that costs less than an Euler first step (benchmarks/spacing.py).
  heun = np.arange(n) < calls - n
  cast = lambda a: jax.device_put(np.asarray(a, jnp.dtype(dtype)))
  ints = lambda a: jax.device_put(np.asarray(a, np.int32))
  noise = churn_noise * np.sqrt(sigma_hat**2 - sigma**2)
  return KarrasTable(timesteps=ints(ts), sigma=cast(sigma), noise=cast(noise),
                     sigma_hat=cast(sigma_hat), t_hat=ints(t_hat), sigma_next=cast(sigma_next),
                     t_next=ints(np.append(ts[1:], 0)), heun=jax.device_put(heun))


def karras_sample(
    table: KarrasTable,
    *,
    model_fn: ModelFn,
    shape: tuple[int, ...],
    key: jax.Array,
    model_mean_type: str = "eps",
    clip_denoised: bool = True,
    return_every: int | None = None,
    sharding: jax.sharding.Sharding | None = None,
    progress: ProgressFn | None = None,
    x_T: jax.Array | None = None,
    inpaint: Inpainting | None = None,
) -> jax.Array | tuple[jax.Array, Trajectory]:
  """x^_{i+1} = x^ + (sigma_{i+1} - sigma^) (d + d') / 2, d = (x^ - D(x^; sigma^)) / sigma^: Heun (Euler: d' = d).

  One `lax.scan` over the n steps of `table` (`karras_table`); the second call of a Heun step is a `lax.cond`,
  skipped on the last step and by Euler. Deterministic without churn: the result is a function of x_T.

    table = karras_table(betas, timesteps=sampling_timesteps(betas, num_steps=10, spacing="karras"))  # 19 calls
    x0 = jax.jit(lambda p, tab, k: karras_sample(tab, model_fn=lambda x, t: net(p, x, t), shape=shape, key=k))(
        params, table, key)

  Args:
    table: the steps.
    model_fn: traceable `model_fn(x_t, t) -> output`, mean output only, `t` the process's step.
    shape: `(batch, ...)` of the samples.
    key: PRNG key (x_T and the churn's noise).
    model_mean_type: what the network predicts: `eps`, `xstart` or `v`.
    clip_denoised: clip every x_0 prediction D to [-1, 1].
    return_every, sharding, progress, x_T: as in `ancestral_sample`; states are x_t (not x^).
    inpaint: the known region, replaced by q_sample of its image after each step.

  Returns:
    x_0 of shape `shape`, and with `return_every` a `Trajectory` as well.
  """
  diffusion.check_model_types(model_mean_type, "fixed_small")
  shape = check_sample_shape(shape)

  def denoise(x_hat: jax.Array, sigma: jax.Array, t: jax.Array) -> jax.Array:
    """D(x^; sigma): the x_0 prediction of the network at step t, its input x^ / sqrt(1 + sigma^2)."""
    scale = jax.lax.rsqrt(1.0 + sigma**2)
    x_t = x_hat * scale
    out = mean_output(model_fn(x_t, jnp.full((shape[0],), t, jnp.int32)), x_t)
    return data_prediction(out, x_t, scale, sigma * scale, model_mean_type, clip_denoised)

  def step(x: jax.Array, extra: None, row: KarrasTable, key: jax.Array) -> tuple[jax.Array, None, jax.Array]:
    x_hat = x * jnp.sqrt(1.0 + row.sigma**2) + row.noise * jax.random.normal(key, shape, x.dtype)
    pred = denoise(x_hat, row.sigma_hat, row.t_hat)
    d = (x_hat - pred) / row.sigma_hat
    x_next = x_hat + (row.sigma_next - row.sigma_hat) * d

    def heun(x_next: jax.Array) -> jax.Array:
      d_next = (x_next - denoise(x_next, row.sigma_next, row.t_next)) / row.sigma_next
      return x_hat + (row.sigma_next - row.sigma_hat) * 0.5 * (d + d_next)

    x_next = jax.lax.cond(row.heun, heun, lambda x_next: x_next, x_next)
    return x_next * jax.lax.rsqrt(1.0 + row.sigma_next**2), None, pred

  abar_next = 1.0 / (1.0 + table.sigma_next**2)
  return run_chain(step, table.timesteps, table, shape, key, return_every, sharding, progress, x_T, inpaint=inpaint,
                   levels=(jnp.sqrt(abar_next), jnp.sqrt(1.0 - abar_next)))

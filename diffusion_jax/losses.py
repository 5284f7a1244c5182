"""Training losses and the variational bound (ELBO) in bits per dimension.

Timesteps `t` are integer indices in `[0, T)`; `t = 0` is the paper's `t = 1`,
whose bound term is the decoder's negative log-likelihood L_0.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from diffusion_jax import diffusion, schedules
from diffusion_jax.checks import ProgressFn, report_progress
from diffusion_jax.diffusion import ModelFn
from diffusion_jax.schedules import DiffusionSchedule


def mean_flat(x: jax.Array) -> jax.Array:
  """Mean over every axis but the first: `(batch, ...) -> (batch,)`."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1: jax.Array, logvar1: jax.Array, mean2: jax.Array, logvar2: jax.Array) -> jax.Array:
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats.

  Args:
    mean1, logvar1, mean2, logvar2: broadcastable arrays.

  Returns:
    The KL divergence, with the broadcast shape of the inputs.
  """
  # exp(d) - 1 - d as expm1(d) - d: no cancellation when the variances are close.
  d = logvar1 - logvar2
  return 0.5 * (jnp.expm1(d) - d + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def _log_diff_ndtr(lo: jax.Array, hi: jax.Array) -> jax.Array:
  """log(Phi(hi) - Phi(lo)) for lo < hi, without cancellation in either tail."""
  # On the right of 0, use Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi).
  right = lo + hi > 0
  a = jnp.where(right, -hi, lo)
  b = jnp.where(right, -lo, hi)
  log_b = log_ndtr(b)
  return log_b + jnp.log1p(-jnp.exp(log_ndtr(a) - log_b))


def discretized_gaussian_log_likelihood(x: jax.Array, *, means: jax.Array, log_scales: jax.Array) -> jax.Array:
  """log P(x) for x on the 256-level grid in [-1, 1] under N(means, e^(2 log_scales)) binned.

  Bins have width 2/255; the outermost bins extend to -inf and +inf. Computed
  with `log_ndtr` in log space, so it stays finite far into the tails.

  Args:
    x: data scaled to [-1, 1] on the grid {2k/255 - 1}.
    means: broadcastable to `x`.
    log_scales: log standard deviations, broadcastable to `x`.

  Returns:
    Log-probabilities in nats, shape of `x`.
  """
  inv_stdv = jnp.exp(-log_scales)
  plus_in = inv_stdv * (x - means + 1.0 / 255.0)
  min_in = inv_stdv * (x - means - 1.0 / 255.0)
  return jnp.where(
      x < -0.999, log_ndtr(plus_in),
      jnp.where(x > 0.999, log_ndtr(-min_in), _log_diff_ndtr(min_in, plus_in)))


LOSS_WEIGHTINGS = ("uniform", "min_snr", "p2")


def loss_weights(betas: np.ndarray, *, weighting: str, model_mean_type: str, min_snr_gamma: float = 5.0,
                 p2_k: float = 1.0, p2_gamma: float = 1.0) -> np.ndarray:
  """w_t of the MSE on the network's target such that w_t |target error|^2 = omega_t |x_0 error|^2.

  With SNR_t = alpha_bar_t / (1 - alpha_bar_t), |eps error|^2 = SNR_t |x_0 error|^2 and |v error|^2 =
  (SNR_t + 1) |x_0 error|^2 (at the same x_t), so one weighting omega_t of the x_0 error is one w_t per target:
  `uniform`: L_simple on the target as it is (w_t = 1);
  `min_snr` (Hang et al. 2023): omega_t = min(SNR_t, gamma), i.e. w_t = min(SNR_t, gamma) / SNR_t for eps,
  min(SNR_t, gamma) for x_0, min(SNR_t, gamma) / (SNR_t + 1) for v;
  `p2` (Choi et al. 2022): the eps-MSE weighted 1 / (k + SNR_t)^gamma, i.e. omega_t = SNR_t / (k + SNR_t)^gamma.
  A step of zero SNR (zero terminal SNR's last) keeps w_t = 1: both would give it no weight, and sampling
  starts there.

  Args:
    betas: float64 betas of the process, shape `(T,)`.
    weighting: one of `LOSS_WEIGHTINGS`.
    model_mean_type: what the network predicts: `eps`, `xstart` or `v`.
    min_snr_gamma: gamma of `min_snr` (the paper's 5), > 0.
    p2_k, p2_gamma: k > 0 and gamma >= 0 of `p2` (the paper's 1 and 1).

  Returns:
    float64 weights, shape `(T,)`.
  """
  betas = schedules.check_betas(betas)
  if weighting not in LOSS_WEIGHTINGS:
    raise ValueError(f"weighting = {weighting!r} is unknown; allowed: {', '.join(LOSS_WEIGHTINGS)}.")
  if model_mean_type not in ("eps", "xstart", "v"):
    raise ValueError(f"model_mean_type = {model_mean_type!r} is unknown; allowed: eps, xstart, v.")
  if not min_snr_gamma > 0 or not p2_k > 0 or not p2_gamma >= 0:
    raise ValueError(f"min_snr_gamma = {min_snr_gamma}, p2_k = {p2_k}, p2_gamma = {p2_gamma}: allowed: "
                     "min_snr_gamma > 0, p2_k > 0, p2_gamma >= 0.")
  if weighting == "uniform":
    return np.ones_like(betas)
  abar = np.cumprod(1.0 - betas)
  with np.errstate(divide="ignore", invalid="ignore"):
    snr = abar / (1.0 - abar)
    omega = np.minimum(snr, min_snr_gamma) if weighting == "min_snr" else snr / (p2_k + snr) ** p2_gamma
    per_x0_error = {"eps": snr, "xstart": np.ones_like(snr), "v": snr + 1.0}[model_mean_type]
    weights = omega / per_x0_error
  return np.where(snr > 0, weights, 1.0)


def mse_loss(
    prediction: jax.Array,
    target: jax.Array,
    *,
    t: jax.Array | None = None,
    timestep_weights: jax.Array | None = None,
) -> jax.Array:
  """L_simple = mean over non-batch axes of (prediction - target)^2, times w[t] if weights are given.

  Args:
    prediction: shape `(batch, ...)`.
    target: shape of `prediction`.
    t: int array of shape `(batch,)`; needed with `timestep_weights`.
    timestep_weights: per-timestep weights, shape `(T,)`.

  Returns:
    Per-example loss, shape `(batch,)`.
  """
  if prediction.shape != target.shape:
    raise ValueError(f"prediction.shape {prediction.shape} != target.shape {target.shape}.")
  loss = mean_flat(jnp.square(prediction.astype(jnp.float32) - target))
  if timestep_weights is None:
    return loss
  if t is None:
    raise ValueError("timestep_weights need the timesteps t.")
  return loss * timestep_weights[t]


def prior_bpd(schedule: DiffusionSchedule, *, x_start: jax.Array) -> jax.Array:
  """L_T = KL(q(x_T | x_0) || N(0, I)) in bits per dimension.

  Args:
    schedule: the process.
    x_start: x_0, shape `(batch, ...)`.

  Returns:
    Shape `(batch,)`.
  """
  t = jnp.full((x_start.shape[0],), schedule.num_diffusion_steps - 1, dtype=jnp.int32)
  mean, _, log_variance = diffusion.q_mean_variance(schedule, x_start=x_start, t=t)
  return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / math.log(2.0)


def vlb_term_bpd(
    schedule: DiffusionSchedule,
    *,
    model_output: jax.Array,
    x_start: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    model_mean_type: str = "eps",
    model_var_type: str = "fixed_large",
    clip_denoised: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), or L_0 = -log p(x_0 | x_1) at t = 0, in bits/dim.

  Args:
    schedule: the process.
    model_output: the network's output at (x_t, t).
    x_start: x_0 on the 256-level grid in [-1, 1], shape `(batch, ...)`.
    x_t: a draw from q(x_t | x_0), shape of `x_start`.
    t: int array of shape `(batch,)`.
    model_mean_type, model_var_type, clip_denoised: as in `p_mean_variance`.

  Returns:
    (term, pred_xstart): the term has shape `(batch,)`.
  """
  true_mean, _, true_log_variance = diffusion.q_posterior_mean_variance(schedule, x_start=x_start, x_t=x_t, t=t)
  out = diffusion.p_mean_variance(
      schedule, model_output=model_output, x_t=x_t, t=t, model_mean_type=model_mean_type, model_var_type=model_var_type,
      clip_denoised=clip_denoised)
  kl = mean_flat(normal_kl(true_mean, true_log_variance, out.mean, out.log_variance))
  decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(
      x_start, means=out.mean, log_scales=0.5 * out.log_variance))
  return jnp.where(t == 0, decoder_nll, kl) / math.log(2.0), out.pred_xstart


def training_losses(
    schedule: DiffusionSchedule,
    *,
    model_fn: ModelFn,
    x_start: jax.Array,
    t: jax.Array,
    noise: jax.Array,
    model_mean_type: str = "eps",
    model_var_type: str = "fixed_large",
    timestep_weights: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """L_simple on the network's target (eps, x_0 or v); plus L_vlb for `learned_range` (L_hybrid).

  For `learned_range` the bound term trains only the variance (the mean is
  held fixed by `stop_gradient`) and is scaled by T/1000, as in Nichol &
  Dhariwal's L_hybrid with lambda = 0.001 at T = 4000.

  Args:
    model_fn: `model_fn(x_t, t) -> output`, `t` of shape `(batch,)`.
    schedule: the process.
    x_start: x_0 in [-1, 1], shape `(batch, ...)`.
    t: int timestep indices of shape `(batch,)` in `[0, T)` (0 is the paper's t = 1).
    noise: eps ~ N(0, I), shape of `x_start`.
    model_mean_type, model_var_type: as in `p_mean_variance`.
    timestep_weights: optional per-timestep weights of the MSE, shape `(T,)`.

  Returns:
    Dict of per-example arrays of shape `(batch,)`: `loss`, `mse`, and `vlb`
    for `learned_range`.
  """
  diffusion.check_model_types(model_mean_type, model_var_type)
  x_t = diffusion.q_sample(schedule, x_start=x_start, t=t, noise=noise)
  model_output = model_fn(x_t, schedule.timesteps[t]).astype(jnp.float32)
  if model_mean_type == "eps":
    target = noise
  elif model_mean_type == "xstart":
    target = x_start
  else:
    target = diffusion.v_target(schedule, x_start=x_start, t=t, noise=noise)
  terms = {}
  if model_var_type == "learned_range":
    mean_output, var_values = diffusion.split_learned_variance(model_output, x_t)
    frozen = jnp.concatenate([jax.lax.stop_gradient(mean_output), var_values], axis=-1)
    vlb, _ = vlb_term_bpd(
        schedule, model_output=frozen, x_start=x_start, x_t=x_t, t=t, model_mean_type=model_mean_type,
        model_var_type=model_var_type, clip_denoised=False)
    terms["vlb"] = vlb * (schedule.num_diffusion_steps / 1000.0)
    model_output = mean_output
  terms["mse"] = mse_loss(model_output, target, t=t, timestep_weights=timestep_weights)
  terms["loss"] = terms["mse"] + terms.get("vlb", 0.0)
  return terms


class VariationalBound(NamedTuple):
  """The bound -log p(x_0) <= L_T + sum_t L_{t-1} + L_0, per image, in bits/dim."""

  total_bpd: jax.Array  # (batch,)
  prior_bpd: jax.Array  # (batch,) L_T
  terms_bpd: jax.Array  # (batch, T): [:, 0] is L_0, [:, t] is L_t for t >= 1
  xstart_mse: jax.Array  # (batch, T): mean squared error of the x_0 prediction at each t


def variational_bound(
    schedule: DiffusionSchedule,
    *,
    model_fn: ModelFn,
    x_start: jax.Array,
    key: jax.Array,
    model_mean_type: str = "eps",
    model_var_type: str = "fixed_large",
    clip_denoised: bool = False,
    timesteps_per_call: int = 1,
    progress: ProgressFn | None = None,
) -> VariationalBound:
  """Every term of the bound for each image, as one compiled `lax.scan` over t.

  Each t draws its own x_t ~ q(x_t | x_0) with noise from
  `fold_in(key, t)`. `timesteps_per_call` timesteps are evaluated at once
  (vmapped) per scan iteration: more parallel work per step on accelerators.

  Args:
    model_fn: `model_fn(x_t, t) -> output`, `t` of shape `(batch,)`.
    schedule: the process.
    x_start: x_0 on the 256-level grid in [-1, 1], shape `(batch, ...)`.
    key: PRNG key.
    model_mean_type, model_var_type, clip_denoised: as in `p_mean_variance`.
    timesteps_per_call: divides T.
    progress: optional host function, called from inside the scan (`jax.debug.callback`)
      with the number of timesteps done, about 50 times.

  Returns:
    `VariationalBound`.
  """
  diffusion.check_model_types(model_mean_type, model_var_type)
  T = schedule.num_diffusion_steps
  if timesteps_per_call < 1 or T % timesteps_per_call:
    raise ValueError(f"timesteps_per_call must divide T = {T}, got {timesteps_per_call}.")
  batch = x_start.shape[0]

  def term(t: jax.Array) -> tuple[jax.Array, jax.Array]:
    noise = jax.random.normal(jax.random.fold_in(key, t), x_start.shape, x_start.dtype)
    tb = jnp.full((batch,), t, dtype=jnp.int32)
    x_t = diffusion.q_sample(schedule, x_start=x_start, t=tb, noise=noise)
    model_output = model_fn(x_t, schedule.timesteps[tb]).astype(jnp.float32)
    bpd, pred_xstart = vlb_term_bpd(
        schedule, model_output=model_output, x_start=x_start, x_t=x_t, t=tb, model_mean_type=model_mean_type,
        model_var_type=model_var_type, clip_denoised=clip_denoised)
    return bpd, mean_flat(jnp.square(pred_xstart - x_start))

  def body(carry: None, ts: jax.Array) -> tuple[None, tuple[jax.Array, jax.Array]]:
    out = jax.vmap(term)(ts)
    report_progress(progress, ts[-1] + 1, T)
    return carry, out

  ts = jnp.arange(T, dtype=jnp.int32).reshape(T // timesteps_per_call, timesteps_per_call)
  _, (terms, mse) = jax.lax.scan(body, None, ts)
  terms = terms.reshape(T, batch).T
  mse = mse.reshape(T, batch).T
  prior = prior_bpd(schedule, x_start=x_start)
  return VariationalBound(prior + terms.sum(axis=1), prior, terms, mse)

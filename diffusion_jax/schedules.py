"""Variance schedules and the `DiffusionSchedule` pytree.

Betas are computed in float64 NumPy on the host. `make_schedule` derives every
buffer of Ho et al. (2020) from them in float64 and casts the result once, so
that float32 buffers carry float32 rounding of the exact value and no more.

Timesteps are integer indices `t` in `[0, T)`; `t = 0` is the paper's `t = 1`.
Every list of timesteps that a function takes or returns is in sampling order:
strictly decreasing, the first step (the largest t) first, as a sampler visits
them (`sampling_timesteps`, `respace`, the samplers' `timesteps`, `solver_table`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.checks import is_int

BETA_SCHEDULES = ("linear", "cosine", "quadratic", "sigmoid", "constant", "custom")


def _check_num_steps(num_diffusion_steps: Any) -> int:
  if not is_int(num_diffusion_steps) or num_diffusion_steps < 1:
    raise ValueError(
        f"num_diffusion_steps must be a positive integer, got {num_diffusion_steps!r}.")
  return int(num_diffusion_steps)


def check_betas(betas: np.ndarray, name: str = "betas") -> np.ndarray:
  """Validates a float64 beta vector: 1-D, non-empty, every entry in (0, 1].

  Args:
    betas: candidate betas.
    name: what to call them in the error message.

  Returns:
    `betas` as a float64 array of shape `(T,)`.
  """
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.size == 0:
    raise ValueError(f"{name} must be a non-empty 1-D array, got shape {betas.shape}.")
  bad = ~((betas > 0) & (betas <= 1))  # Also catches NaN.
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(
        f"{name} must lie in (0, 1]; entry {i} is {float(betas[i])!r}.")
  return betas


def _endpoints(T: int, beta_start: float | None, beta_end: float | None) -> tuple[float, float]:
  """The paper's 1e-4 and 0.02 at T = 1000, scaled by 1000/T, unless given explicitly."""
  scale = 1000.0 / T
  return (1e-4 * scale if beta_start is None else beta_start, 0.02 * scale if beta_end is None else beta_end)


def _linear(T: int, beta_start: float | None = None, beta_end: float | None = None) -> np.ndarray:
  start, end = _endpoints(T, beta_start, beta_end)
  return np.linspace(start, end, T, dtype=np.float64)


def _quadratic(T: int, beta_start: float | None = None, beta_end: float | None = None) -> np.ndarray:
  start, end = _endpoints(T, beta_start, beta_end)
  return np.linspace(start**0.5, end**0.5, T, dtype=np.float64) ** 2


def _sigmoid(T: int, beta_start: float | None = None, beta_end: float | None = None) -> np.ndarray:
  start, end = _endpoints(T, beta_start, beta_end)
  s = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, T, dtype=np.float64)))
  return start + (end - start) * s


def _constant(T: int, beta: float | None = None) -> np.ndarray:
  return np.full(T, 0.02 * 1000.0 / T if beta is None else beta, dtype=np.float64)


def _cosine(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  f = lambda u: np.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2
  steps = np.arange(T + 1, dtype=np.float64)
  alphas_cumprod = f(steps) / f(0.0)
  return np.minimum(1.0 - alphas_cumprod[1:] / alphas_cumprod[:-1], max_beta)


def _custom(T: int, betas: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
  if betas is None:
    raise ValueError("beta schedule 'custom' needs betas=<array of shape (T,)>.")
  betas = np.asarray(betas, dtype=np.float64)
  if betas.shape != (T,):
    raise ValueError(
        f"custom betas must have shape (num_diffusion_steps,) = ({T},), got {betas.shape}.")
  return betas


_SCHEDULE_FNS: dict[str, Callable[..., np.ndarray]] = {
    "linear": _linear,
    "cosine": _cosine,
    "quadratic": _quadratic,
    "sigmoid": _sigmoid,
    "constant": _constant,
    "custom": _custom,
}
SCHEDULE_KWARGS = {
    "linear": ("beta_start", "beta_end"),
    "quadratic": ("beta_start", "beta_end"),
    "sigmoid": ("beta_start", "beta_end"),
    "constant": ("beta",),
    "cosine": ("s", "max_beta"),
    "custom": ("betas",),
}


def get_beta_schedule(name: str, *, num_diffusion_steps: int, **kwargs: Any) -> np.ndarray:
  """beta_1..beta_T of a named schedule, in float64.

  `linear`, `quadratic` and `sigmoid` default to the paper's endpoints
  1e-4 and 0.02 at T = 1000, scaled by 1000/T for other T so that every T
  describes a comparable process; `beta_start`/`beta_end` override them (no
  scaling). `constant` takes `beta` (default 0.02 * 1000/T). `cosine` is
  Nichol & Dhariwal's alpha_bar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s)
  * pi/2), with `s` = 0.008 and betas clipped at `max_beta` = 0.999. `custom`
  takes `betas` of shape `(T,)`.

  Args:
    name: one of `BETA_SCHEDULES`.
    num_diffusion_steps: T, a positive integer.
    **kwargs: the schedule's own parameters (above).

  Returns:
    float64 array of shape `(T,)` with every entry in (0, 1].
  """
  if name not in _SCHEDULE_FNS:
    raise ValueError(f"Unknown beta schedule {name!r}; allowed: {', '.join(BETA_SCHEDULES)}.")
  T = _check_num_steps(num_diffusion_steps)
  unknown = sorted(set(kwargs) - set(SCHEDULE_KWARGS[name]))
  if unknown:
    raise ValueError(
        f"Unknown argument(s) {unknown} for beta schedule {name!r}; "
        f"allowed: {list(SCHEDULE_KWARGS[name])}.")
  return check_betas(_SCHEDULE_FNS[name](T, **kwargs), name=f"betas of schedule {name!r}")


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
  """Betas with alpha_bar_T = 0 (Lin et al. 2024, Algorithm 1): sqrt(alpha_bar) shifted and scaled so that its last
  value is 0 and its first unchanged; the last beta is 1.

  The process then ends in pure noise, as sampling starts: x_T carries no signal. An eps-predicting network
  cannot give x_0 there (x_0 = (x_T - sqrt(1 - alpha_bar_T) eps) / sqrt(alpha_bar_T) divides by 0): train it to
  predict v or x_0.

  Args:
    betas: float64 betas, shape `(T,)`, T >= 2, with alpha_bar strictly decreasing.

  Returns:
    float64 betas, shape `(T,)`, each in (0, 1], the last exactly 1.
  """
  betas = check_betas(betas)
  if len(betas) < 2:
    raise ValueError(f"rescale_zero_terminal_snr needs T >= 2 steps, got {len(betas)}.")
  root = np.sqrt(np.cumprod(1.0 - betas))
  if not (root[-1] < root[0]):
    raise ValueError("rescale_zero_terminal_snr needs alpha_bar to fall from the first step to the last.")
  root = (root - root[-1]) * (root[0] / (root[0] - root[-1]))
  alphas_cumprod = root**2
  alphas = np.append(alphas_cumprod[0], alphas_cumprod[1:] / alphas_cumprod[:-1])
  return check_betas(1.0 - alphas, name="rescaled betas")


@flax.struct.dataclass
class DiffusionSchedule:
  """Every per-timestep buffer of the forward and posterior processes, shape `(T,)`.

  A pytree: pass it into jitted functions as an argument. `timesteps[i]` is the
  index of the original (un-respaced) process that step `i` stands for, i.e.
  the `t` a network trained on the original process must be given.
  """

  betas: jnp.ndarray
  alphas_cumprod: jnp.ndarray
  alphas_cumprod_prev: jnp.ndarray
  sqrt_alphas_cumprod: jnp.ndarray
  sqrt_one_minus_alphas_cumprod: jnp.ndarray
  log_one_minus_alphas_cumprod: jnp.ndarray
  sqrt_recip_alphas_cumprod: jnp.ndarray
  sqrt_recipm1_alphas_cumprod: jnp.ndarray
  posterior_variance: jnp.ndarray
  posterior_log_variance_clipped: jnp.ndarray
  posterior_mean_coef1: jnp.ndarray
  posterior_mean_coef2: jnp.ndarray
  fixed_large_variance: jnp.ndarray
  fixed_large_log_variance: jnp.ndarray
  timesteps: jnp.ndarray

  @property
  def num_diffusion_steps(self) -> int:
    """T, static under `jax.jit`."""
    return self.betas.shape[0]


def schedule_buffers(betas: np.ndarray) -> dict[str, np.ndarray]:
  """All float64 buffers of `DiffusionSchedule` (but `timesteps`) from betas of shape `(T,)`."""
  betas = check_betas(betas)
  alphas = 1.0 - betas
  alphas_cumprod = np.cumprod(alphas)
  alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
  posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
  # posterior_variance[0] is 0; clip the log there to the next value, as in Ho et al.
  first = posterior_variance[1] if len(betas) > 1 else betas[0]
  posterior_variance_clipped = np.append(first, posterior_variance[1:])
  # fixed_large: sigma_t^2 = beta_t, but the paper's posterior variance at t = 0
  # (a better decoder likelihood; sampling adds no noise there anyway).
  fixed_large_variance = np.append(first, betas[1:])
  with np.errstate(divide="ignore"):
    return dict(
        betas=betas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
        log_one_minus_alphas_cumprod=np.log(1.0 - alphas_cumprod),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1.0),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=np.log(posterior_variance_clipped),
        posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
        fixed_large_variance=fixed_large_variance,
        fixed_large_log_variance=np.log(fixed_large_variance),
    )


def make_schedule(
    betas: np.ndarray,
    *,
    dtype: jnp.dtype = jnp.float32,
    timesteps: np.ndarray | None = None,
) -> DiffusionSchedule:
  """`DiffusionSchedule` from float64 betas, every buffer computed in float64 and cast once.

  Args:
    betas: betas of shape `(T,)`, each in (0, 1].
    dtype: floating dtype of the buffers.
    timesteps: the `DiffusionSchedule.timesteps` buffer: the original-process
      index of each step, increasing, shape `(T,)`; defaults to `arange(T)`.
      Set by `respace`.

  Returns:
    The schedule.
  """
  buffers = schedule_buffers(betas)
  T = len(buffers["betas"])
  timesteps = np.arange(T) if timesteps is None else np.asarray(timesteps)
  if timesteps.shape != (T,):
    raise ValueError(f"timesteps must have shape ({T},), got {timesteps.shape}.")
  # Cast on the host and transfer: no program is compiled just to build the schedule.
  return DiffusionSchedule(
      **{k: jax.device_put(np.asarray(v, dtype=jnp.dtype(dtype))) for k, v in buffers.items()},
      timesteps=jax.device_put(timesteps.astype(np.int32)),
  )


def _linspace_timesteps(T: int, n: int) -> np.ndarray:
  """`n` indices evenly spread over `[0, T)`, increasing, keeping 0 and T - 1 (points >= 1 apart round apart)."""
  return np.array([T - 1]) if n == 1 else np.round(np.linspace(0, T - 1, n)).astype(np.int64)


def check_timesteps(timesteps: Any, T: int) -> np.ndarray:
  """Raises `ValueError` unless `timesteps` are in sampling order: strictly decreasing integers in [0, T).

  Returns:
    The timesteps as an int32 NumPy array of shape `(n,)`.
  """
  ts = np.asarray(timesteps)
  if (ts.ndim != 1 or ts.size == 0 or not np.issubdtype(ts.dtype, np.integer) or ts.min() < 0 or ts.max() >= T
      or np.any(np.diff(ts) >= 0)):
    raise ValueError(f"timesteps must be a non-empty strictly decreasing integer sequence in [0, T = {T}) "
                     f"(sampling order: the first step first), got {timesteps!r}.")
  return ts.astype(np.int32)


SPACINGS = ("linspace", "leading", "trailing", "logsnr", "quadratic", "karras")


def _strictly_increasing(timesteps: np.ndarray, T: int) -> np.ndarray:
  """Rounded ascending timesteps made distinct: collisions pushed up, then whatever passed T - 1 pushed down."""
  out = timesteps.astype(np.int64)
  for i in range(1, len(out)):
    out[i] = max(out[i], out[i - 1] + 1)
  out[-1] = min(out[-1], T - 1)
  for i in range(len(out) - 2, -1, -1):
    out[i] = min(out[i], out[i + 1] - 1)
  return out


def sampling_timesteps(betas: np.ndarray, *, num_steps: int, spacing: str = "linspace") -> np.ndarray:
  """The `num_steps` timesteps a few-step sampler calls the network at, first (largest) first.

  With T = len(betas) and n = num_steps (diffusers' names for the first three):
  `linspace`: round(linspace(0, T - 1, n)), keeps 0 and T - 1;
  `leading`: i * (T // n) for i < n, keeps 0;
  `trailing`: round(T - i T / n) - 1 for i < n, keeps T - 1 (Lin et al. 2024);
  `logsnr`: uniform in lambda = log(alpha_bar / (1 - alpha_bar)) / 2 from lambda(T - 1) to lambda(0), t
  read off the discrete log alpha(t) by linear interpolation, as DPM-Solver's reference code does;
  `quadratic`: round((T - 1) (i / (n - 1))^2), dense near t = 0 (DDIM's "quad");
  `karras`: sigma = sqrt((1 - alpha_bar) / alpha_bar) at (sigma_max^(1/7) + i/(n - 1) (sigma_min^(1/7) -
  sigma_max^(1/7)))^7 from sigma(T - 1) to sigma(0) (Karras et al. 2022, rho = 7), t the nearest in log sigma.
  Rounding collisions (logsnr, quadratic and karras with many steps) move to the nearest free steps.
  A sampler ends at the clean data after the last (smallest) timestep; every step's successor is the
  next entry, never a stride.

  Args:
    betas: float64 betas of the process, shape `(T,)`.
    num_steps: n in `[1, T]`.
    spacing: one of `SPACINGS`.

  Returns:
    Strictly decreasing int64 array of shape `(num_steps,)` in `[0, T)`.
  """
  betas = check_betas(betas)
  T = len(betas)
  if spacing not in SPACINGS:
    raise ValueError(f"spacing = {spacing!r} is unknown; allowed: {', '.join(SPACINGS)}.")
  if not is_int(num_steps) or not 1 <= num_steps <= T:
    raise ValueError(f"num_steps = {num_steps!r} is invalid; allowed: an integer in [1, T = {T}].")
  n = int(num_steps)
  i = np.arange(n, dtype=np.float64)
  if n == 1:
    ascending = np.array([T - 1 if spacing != "leading" else 0])
  elif spacing == "linspace":
    ascending = _linspace_timesteps(T, n)
  elif spacing == "leading":
    ascending = np.arange(n) * (T // n)
  elif spacing == "trailing":
    ascending = (np.round(T - i * T / n) - 1)[::-1]
  elif spacing == "quadratic":
    ascending = _strictly_increasing(np.round((T - 1) * (i / (n - 1)) ** 2), T)
  elif betas[-1] == 1.0:
    raise ValueError(f"spacing = {spacing!r} is undefined for zero terminal SNR (lambda(T - 1) = -inf); use "
                     "'trailing'.")
  elif spacing == "karras":
    log_sigma = 0.5 * np.log(np.expm1(-np.cumsum(np.log1p(-betas))))  # increasing in t
    root = np.linspace(np.exp(log_sigma[0] / 7), np.exp(log_sigma[-1] / 7), n)
    ascending = _strictly_increasing(np.abs(7 * np.log(root)[:, None] - log_sigma).argmin(1), T)
  else:  # logsnr
    log_alpha = 0.5 * np.log(np.cumprod(1.0 - betas))  # decreasing in t
    lam = log_alpha - 0.5 * np.log(-np.expm1(2 * log_alpha))
    target = -0.5 * np.logaddexp(0.0, -2.0 * np.linspace(lam[-1], lam[0], n))
    t = np.interp(target, log_alpha[::-1], np.arange(T, dtype=np.float64)[::-1])
    ascending = _strictly_increasing(np.round(t)[::-1], T)
  return np.asarray(ascending, np.int64)[::-1].copy()


def respace_betas(betas: np.ndarray, *, timesteps: Sequence[int] | np.ndarray) -> np.ndarray:
  """beta'_i = 1 - alpha_bar[t_i] / alpha_bar[t_{i-1}]: the process that visits only `timesteps`.

  Args:
    betas: float64 betas of the original process, shape `(T,)`.
    timesteps: the kept indices in sampling order (strictly decreasing) in `[0, T)`.

  Returns:
    float64 betas of shape `(len(timesteps),)`, the kept steps in increasing order.
  """
  alphas_cumprod = np.cumprod(1.0 - check_betas(betas))
  kept = alphas_cumprod[check_timesteps(timesteps, len(alphas_cumprod))[::-1]]
  return 1.0 - kept / np.append(1.0, kept[:-1])


def respace(
    betas: np.ndarray,
    *,
    timesteps: Sequence[int] | np.ndarray,
    dtype: jnp.dtype = jnp.float32,
) -> DiffusionSchedule:
  """The schedule of the sub-process that visits only `timesteps` (Nichol & Dhariwal).

  Takes the float64 betas rather than a `DiffusionSchedule`: the new betas are
  ratios of neighbouring alpha_bar, which float32 buffers would lose to
  cancellation. The result's `timesteps` buffer maps each new step to the
  original index, which is what the network is given.

  Args:
    betas: float64 betas of the original process, shape `(T,)`.
    timesteps: the kept indices in sampling order (strictly decreasing) in
      `[0, T)`, e.g. `sampling_timesteps(betas, num_steps=100)`.
    dtype: floating dtype of the buffers.

  Returns:
    A schedule with `len(timesteps)` steps.
  """
  return make_schedule(respace_betas(betas, timesteps=timesteps), dtype=dtype,
                       timesteps=np.asarray(timesteps)[::-1])

"""Independent float64 NumPy references, written from the papers' formulas.

Nothing here imports diffusion_jax: every quantity is derived afresh, often by a
different route than the library takes (products of Gaussians instead of the
closed-form coefficients, loops instead of cumulative products).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special, stats

F32_RTOL = 1e-5


def linear_betas(T: int, start: float = 1e-4, end: float = 0.02) -> np.ndarray:
  return np.array([start + (end - start) * i / (T - 1) for i in range(T)]) if T > 1 else np.array([start])


def cosine_betas(T: int, s: float = 0.008) -> np.ndarray:
  abar = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
  return np.array([min(1 - abar(i + 1) / abar(i), 0.999) for i in range(T)])


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
  out, acc = [], 1.0
  for b in betas:
    acc *= 1.0 - b
    out.append(acc)
  return np.array(out)


def posterior_by_bayes(betas: np.ndarray, x0: np.ndarray, xt: np.ndarray, t: int):
  """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0), as a product of Gaussians."""
  abar = alphas_cumprod(betas)
  alpha_t = 1.0 - betas[t]
  if t == 0:  # q(x_{-1} | x_0) is a point mass at x_0.
    return x0.copy(), 0.0
  prior_mean, prior_var = math.sqrt(abar[t - 1]) * x0, 1.0 - abar[t - 1]
  # q(x_t | x_{t-1}) as a function of x_{t-1}: N(x_t / sqrt(alpha_t), beta_t / alpha_t).
  lik_mean, lik_var = xt / math.sqrt(alpha_t), betas[t] / alpha_t
  var = 1.0 / (1.0 / prior_var + 1.0 / lik_var)
  return var * (prior_mean / prior_var + lik_mean / lik_var), var


def algorithm2_mean(betas: np.ndarray, xt: np.ndarray, t: int, eps: np.ndarray) -> np.ndarray:
  """1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps), Ho et al. Algorithm 2."""
  abar = alphas_cumprod(betas)[t]
  return (xt - betas[t] / math.sqrt(1.0 - abar) * eps) / math.sqrt(1.0 - betas[t])


def normal_kl(m1, lv1, m2, lv2):
  v1, v2 = np.exp(lv1), np.exp(lv2)
  return 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1.0)


def discretized_gaussian_logp(x, mean, sd):
  lo = np.where(x < -0.999, -np.inf, x - 1 / 255)
  hi = np.where(x > 0.999, np.inf, x + 1 / 255)
  # Take the difference on the side where both tail probabilities are small (no cancellation).
  right = (lo + hi) / 2 > mean
  p = np.where(right, stats.norm.sf(lo, mean, sd) - stats.norm.sf(hi, mean, sd),
               stats.norm.cdf(hi, mean, sd) - stats.norm.cdf(lo, mean, sd))
  with np.errstate(divide="ignore"):
    return np.log(p)


def timestep_embedding(t: np.ndarray, dim: int) -> np.ndarray:
  half = dim // 2
  freqs = np.exp(-math.log(10000.0) * np.arange(half) / (half - 1))
  args = t.astype(np.float64)[:, None] * freqs[None]
  emb = np.concatenate([np.sin(args), np.cos(args)], axis=1)
  return np.pad(emb, ((0, 0), (0, dim % 2)))


def grid_levels() -> np.ndarray:
  """The 256 values a uint8 pixel takes after scaling to [-1, 1]."""
  return np.arange(256) / 127.5 - 1.0


def discretized_normal_pmf(m: float, s: float) -> np.ndarray:
  """P(level k) for N(m, s^2) binned to the 256-level grid (outer bins to +-inf)."""
  edges = np.concatenate([[-np.inf], grid_levels()[:-1] + 1 / 255, [np.inf]])
  return np.diff(stats.norm.cdf(edges, m, s))


def entropy_bits(p: np.ndarray) -> float:
  p = p[p > 0]
  return float(-(p * np.log2(p)).sum())


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
  return x - special.logsumexp(x, axis=axis, keepdims=True)


def gaussian_sampler_moments(abar_kept: np.ndarray, m: float, s: float, *, variance: str, eta: float | None = None,
                             start: tuple[float, float] = (0.0, 1.0)):
  """Exact mean and std of a sampler's output for data N(m, s^2) and the optimal eps predictor.

  With eps*(x_t) = sqrt(1 - abar)(x_t - sqrt(abar) m) / (abar s^2 + 1 - abar), every
  step is x_s = a x_t + b + sigma z, so the output is Gaussian; its moments follow
  by recursion from x_T ~ N(0, 1) (or N(start[0], start[1])). `abar_kept` are the visited alpha_bars in
  increasing t. Ancestral (variance 'small' or 'large') when `eta` is None, else DDIM.
  """
  mu, var = start
  for i in range(len(abar_kept) - 1, -1, -1):
    ab, ab_prev = abar_kept[i], (abar_kept[i - 1] if i > 0 else 1.0)
    k = math.sqrt(1 - ab) / (ab * s * s + 1 - ab)
    x0_a, x0_b = (1 - math.sqrt(1 - ab) * k) / math.sqrt(ab), math.sqrt(1 - ab) * k * m
    if eta is None:
      beta = 1 - ab / ab_prev
      c1, c2 = beta * math.sqrt(ab_prev) / (1 - ab), (1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab)
      a, b = c1 * x0_a + c2, c1 * x0_b
      step_var = 0.0 if i == 0 else (beta * (1 - ab_prev) / (1 - ab) if variance == "small" else beta)
    else:
      eps_a, eps_b = (1 - math.sqrt(ab) * x0_a) / math.sqrt(1 - ab), -math.sqrt(ab) * x0_b / math.sqrt(1 - ab)
      step_var = eta**2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
      c = math.sqrt(max(1 - ab_prev - step_var, 0.0))
      a, b = math.sqrt(ab_prev) * x0_a + c * eps_a, math.sqrt(ab_prev) * x0_b + c * eps_b
    mu, var = a * mu + b, a * a * var + step_var
  return mu, math.sqrt(var)


def gaussian_eps(schedule, m: float, s: float):
  """The exact eps of data N(m, s^2) per entry: sqrt(1 - abar) (x_t - sqrt(abar) m) / (abar s^2 + 1 - abar), a
  `model_fn(x_t, t)` for inputs of shape (batch, d)."""
  def model_fn(x, t):
    a = schedule.alphas_cumprod[t][:, None]
    return (1 - a) ** 0.5 * (x - a**0.5 * m) / (a * s * s + 1 - a)
  return model_fn

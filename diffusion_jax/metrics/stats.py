"""Feature statistics and distances between two samples, in float64 on the host.

`RunningStats` accumulates the mean and covariance of features batch by batch,
so that 50,000 samples never sit in memory at once. `frechet_distance` is the
FID's distance between two Gaussians; `kid` the unbiased MMD^2 of the Kernel
Inception Distance; `energy_distance` the distance used for low-dimensional data;
`bootstrap_std` how much any of them would move with another draw of the sample.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np


class RunningStats:
  """Streaming mean and covariance of `dim`-dimensional features (float64, Chan et al.'s pairwise merge).

  Each batch's own mean and centred scatter are merged into the totals, so no
  large sum of squares is ever differenced: exact to float64 rounding whatever
  the features' offset.
  """

  def __init__(self, dim: int):
    self.dim = dim
    self.count = 0
    self._mean = np.zeros(dim)
    self._scatter = np.zeros((dim, dim))  # sum (x - mean)(x - mean)^T

  def update(self, features: np.ndarray) -> RunningStats:
    """Adds a batch of features of shape `(n, dim)`; returns self."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[1] != self.dim:
      raise ValueError(f"features must have shape (n, {self.dim}), got {x.shape}.")
    n = x.shape[0]
    if n == 0:
      return self
    mean = x.mean(0)
    centred = x - mean
    delta = mean - self._mean
    total = self.count + n
    self._scatter += centred.T @ centred + np.outer(delta, delta) * (self.count * n / total)
    self._mean += delta * (n / total)
    self.count = total
    return self

  @property
  def mean(self) -> np.ndarray:
    """mu = sum x / n, shape `(dim,)`."""
    if self.count < 1:
      raise ValueError("no features were added.")
    return self._mean.copy()

  @property
  def cov(self) -> np.ndarray:
    """Sigma = sum (x - mu)(x - mu)^T / (n - 1), the unbiased covariance, shape `(dim, dim)`."""
    if self.count < 2:
      raise ValueError(f"a covariance needs at least 2 samples, got {self.count}.")
    return self._scatter / (self.count - 1)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
  """The symmetric square root of a symmetric positive semi-definite matrix (negative rounding -> 0)."""
  w, v = np.linalg.eigh((a + a.T) / 2)
  return (v * np.sqrt(np.maximum(w, 0.0))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
  """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2): the Frechet distance of two Gaussians.

  tr((S1 S2)^1/2) is computed as the sum of the square roots of the eigenvalues
  of the symmetric PSD matrix S1^1/2 S2 S1^1/2 (the same spectrum as S1 S2),
  which needs no inverse: correct also for rank-deficient covariances, where
  `scipy.linalg.sqrtm(S1 @ S2)` loses accuracy or returns complex values.

  Args:
    mu1, mu2: means, shape `(d,)`.
    cov1, cov2: covariances, shape `(d, d)`, symmetric PSD.

  Returns:
    The distance (>= 0 up to rounding), a float.
  """
  mu1, mu2, cov1, cov2 = (np.asarray(a, np.float64) for a in (mu1, mu2, cov1, cov2))
  d = mu1.shape[0]
  if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
    raise ValueError(f"means must have shape (d,) and covariances (d, d); got {mu1.shape}, {cov1.shape}, "
                     f"{mu2.shape}, {cov2.shape}.")
  root = _sqrt_psd(cov1)
  middle = np.linalg.eigvalsh(root @ cov2 @ root)
  trace_sqrt = float(np.sqrt(np.maximum(middle, 0.0)).sum())
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """k(x, y) = (x . y / d + 1)^3, the cubic kernel of the KID."""
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def kid(features1: np.ndarray, features2: np.ndarray, *, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
  """Kernel Inception Distance: the unbiased MMD^2 with the cubic polynomial kernel, over random subsets.

  MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
  - 2 sum_{i, j} k(x_i, y_j) / m^2, on `num_subsets` pairs of subsets of `m` points
  drawn without replacement (Binkowski et al. 2018). Unbiased: its mean is 0 for
  two samples of one distribution.

  Args:
    features1, features2: shape `(n1, d)` and `(n2, d)`.
    num_subsets: how many subset pairs.
    subset_size: m; capped at the smaller sample's size, and at least 2.
    seed: for the subsets.

  Returns:
    (mean, standard deviation) of MMD^2_u over the subsets.
  """
  x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f"features must have shapes (n1, d) and (n2, d), got {x.shape} and {y.shape}.")
  m = min(subset_size, len(x), len(y))
  if m < 2:
    raise ValueError(f"KID needs at least 2 samples on each side, got {len(x)} and {len(y)}.")
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(num_subsets):
    a = x[rng.choice(len(x), m, replace=False)]
    b = y[rng.choice(len(y), m, replace=False)]
    kxx, kyy, kxy = _polynomial_kernel(a, a), _polynomial_kernel(b, b), _polynomial_kernel(a, b)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    values.append(within - 2.0 * kxy.mean())
  return float(np.mean(values)), float(np.std(values))


def _mean_distance(x: np.ndarray, y: np.ndarray) -> float:
  """The mean of ||x_i - y_j|| over all pairs (i, j)."""
  sq = np.sum(x**2, 1)[:, None] + np.sum(y**2, 1)[None, :] - 2.0 * x @ y.T
  return float(np.sqrt(np.maximum(sq, 0.0)).mean())


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
  """2 E||X - Y|| - E||X - X'|| - E||Y - Y'|| with every mean over all pairs (Szekely & Rizzo's V-statistic).

  The within-sample means include the zero distances of a point to itself, so the
  statistic is >= 0 and its expectation for two samples of one law is
  E||X - X'|| / n + E||Y - Y'|| / m, not 0: a real-data baseline of the same sizes
  is then a positive number that model figures can be read against.

  Args:
    x, y: samples of shape `(n, d)` and `(m, d)`.

  Returns:
    The energy distance, a float.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
    raise ValueError(f"samples must have shapes (n, d) and (m, d) with n, m >= 2, got {x.shape} and {y.shape}.")
  return 2.0 * _mean_distance(x, y) - _mean_distance(x, x) - _mean_distance(y, y)


def bootstrap_std(statistic: Callable[[np.ndarray], Mapping[str, float]], n: int, *, num_resamples: int,
                  seed: int = 0) -> dict[str, float]:
  """std_b statistic(I_b), I_b n indices drawn with replacement: each figure's bootstrap standard deviation (Efron).

  It estimates how far a figure of n samples moves between independent draws of n samples, from the one draw
  at hand: `statistic` maps the indices of a resample to its figures.

  Args:
    statistic: int indices of shape `(n,)` -> {name: figure}.
    n: the sample size.
    num_resamples: B >= 2 resamples; the estimate's own relative error is about 1 / sqrt(2 B).
    seed: for the resamples.

  Returns:
    {name: the standard deviation (ddof 1) of the figure over the resamples}.
  """
  if num_resamples < 2 or n < 1:
    raise ValueError(f"the bootstrap needs num_resamples >= 2 and n >= 1, got {num_resamples} and {n}.")
  rng = np.random.default_rng(seed)
  draws = [statistic(rng.integers(0, n, n)) for _ in range(num_resamples)]
  return {k: float(np.std([d[k] for d in draws], ddof=1)) for k in draws[0]}

"""Training-free multistep solvers of the probability-flow ODE: DPM-Solver++ (Lu et al. 2022, data prediction)
and UniPC (Zhao et al. 2023, B(h) = e^h - 1), as a weight table computed once in float64 on the host and one
`lax.scan` that only takes the weighted sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import diffusion, schedules
from diffusion_jax.checks import ProgressFn, is_int
from diffusion_jax.diffusion import ModelFn
from diffusion_jax.sampling import (
    Inpainting,
    Trajectory,
    check_inpainting,
    check_sample_shape,
    mean_output,
    replace_known,
    run_chain,
)
from diffusion_jax.schedules import check_timesteps

SOLVERS = ("dpm_solver++", "unipc")


@flax.struct.dataclass
class SolverTable:
  """A multistep solver as per-step weights, leading axis the n steps (first step first).

  Step i calls the network at x_i, t_i and turns its output into the data prediction m_i = D(x_i, t_i)
  (clipped if asked); then, with H = (m_{i-1}, ..., m_{i-K}) the earlier predictions:

    corrector:  x_i <- keep_i x_i + last_i x_{i-1} + sum_k history_c[i, k] H_k + new_i m_i
    predictor:  x_{i+1} = scale_i x_i + sum_k history_p[i, k] (m_i, H_0, ..., H_{K-2})_k

  where x_{i-1} is the previous step's (corrected) state. DPM-Solver++ has no corrector (keep = 1, the rest
  0). Every weight is a function of the timesteps alone, computed in float64 on the host by
  `solver_table`: the compiled scan does only the weighted sums. After the last step the chain is at the
  clean data (alpha = 1, sigma = 0): that step is first order, x = m.
  """

  timesteps: jax.Array  # (n,) int32: t_i, the network's timestep
  alpha: jax.Array  # (n,) sqrt(alpha_bar[t_i])
  sigma: jax.Array  # (n,) sqrt(1 - alpha_bar[t_i])
  keep: jax.Array  # (n,)
  last: jax.Array  # (n,)
  history_c: jax.Array  # (n, K)
  new: jax.Array  # (n,)
  scale: jax.Array  # (n,)
  history_p: jax.Array  # (n, K)

  @property
  def history(self) -> int:
    """K, the number of earlier data predictions carried (the solver's order)."""
    return self.history_p.shape[1]


def _check_order(order: Any) -> int:
  if not is_int(order) or not 1 <= order <= 3:
    raise ValueError(f"order = {order!r} is invalid; allowed: 1, 2 or 3.")
  return int(order)


def _step_orders(solver: str, order: int, n: int) -> np.ndarray:
  """Each step's order: lower for the first steps (too few earlier outputs) and for the final ones.

  DPM-Solver++ (as diffusers): the step to the clean data is first order, the one before at most second order
  when n < 15. UniPC: step i at most order n - i.
  """
  i = np.arange(n)
  orders = np.minimum(order, i + 1)
  if solver == "unipc":
    return np.minimum(orders, n - i)
  orders[-1] = 1
  if n < 15 and n >= 2:
    orders[-2] = min(orders[-2], 2)
  return orders


def _dpm_solver_pp_weights(lam: np.ndarray, alpha: np.ndarray, sigma: np.ndarray, i: int, p: int
                           ) -> tuple[float, np.ndarray]:
  """DPM-Solver++ multistep (Lu et al. 2022, data prediction, the "midpoint" second order) from node i to i + 1.

  Returns:
    (weight of x_i, weights of (m_i, m_{i-1}, m_{i-2})).
  """
  h = lam[i + 1] - lam[i]
  phi = alpha[i + 1] * np.expm1(-h)
  e = np.eye(3)  # m_i, m_{i-1}, m_{i-2} as basis vectors
  if p == 1:
    d = -phi * e[0]
  elif p == 2:
    r0 = (lam[i] - lam[i - 1]) / h
    d = -phi * (e[0] + 0.5 * (e[0] - e[1]) / r0)
  else:
    r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
    d1_0, d1_1 = (e[0] - e[1]) / r0, (e[1] - e[2]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    psi = alpha[i + 1] * (np.expm1(-h) / h + 1.0)
    chi = alpha[i + 1] * ((np.expm1(-h) + h) / h**2 - 0.5)
    d = -phi * e[0] + psi * d1 - chi * d2
  return sigma[i + 1] / sigma[i], d


def _unipc_weights(lam: np.ndarray, alpha: np.ndarray, sigma: np.ndarray, i: int, p: int, corrector: bool
                   ) -> tuple[float, np.ndarray, float]:
  """UniPC B(h) = e^h - 1 ("bh2", Zhao et al. 2023, data prediction) from node i to i + 1, order p.

  The predictor (UniP) uses m_i, ..., m_{i-p+1}; the corrector (UniC) of the step to node i + 1 also uses
  the output m_{i+1} at the predicted x_{i+1}.

  Returns:
    (weight of x_i, weights of (m_i, m_{i-1}, m_{i-2}), weight of m_{i+1}: 0 for the predictor).
  """
  h = lam[i + 1] - lam[i]
  hh = -h
  h_phi_1 = b_h = np.expm1(hh)  # h phi_1(h) = e^h - 1 and B(h) = e^h - 1 (bh2)
  num_rks = p if corrector else p - 1
  rks = np.array([(lam[i - k] - lam[i]) / h for k in range(1, p)] + [1.0])
  h_phi_k, factorial, b = h_phi_1 / hh - 1.0, 1, []
  for k in range(1, num_rks + 1):
    b.append(h_phi_k * factorial / b_h)
    factorial *= k + 1
    h_phi_k = h_phi_k / hh - 1.0 / factorial
  if num_rks == 0:  # first-order UniP: no correction terms
    rhos = np.zeros(0)
  elif num_rks == 1:  # UniC-1 and UniP-2: the reference code's rho = 1/2
    rhos = np.array([0.5])
  else:  # R rho = b, R the Vandermonde matrix of the r_k
    rhos = np.linalg.solve(np.stack([rks[:num_rks] ** k for k in range(num_rks)]), np.array(b))
  d = -alpha[i + 1] * h_phi_1 * np.eye(3)[0]
  for k in range(1, p):  # D1_k = (m_{i-k} - m_i) / r_k
    d[k] -= alpha[i + 1] * b_h * rhos[k - 1] / rks[k - 1]
    d[0] += alpha[i + 1] * b_h * rhos[k - 1] / rks[k - 1]
  new = 0.0
  if corrector:  # + rho_p (m_{i+1} - m_i)
    new = -alpha[i + 1] * b_h * rhos[-1]
    d[0] -= new
  return sigma[i + 1] / sigma[i], d, new


def solver_table(betas: np.ndarray, *, timesteps: Sequence[int] | np.ndarray, solver: str = "dpm_solver++",
                 order: int = 2, dtype: jnp.dtype = jnp.float32) -> SolverTable:
  """The weights of DPM-Solver++ or UniPC on `timesteps` of the process of `betas`, computed in float64.

  alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t) and lambda_t = log(alpha_t / sigma_t) at the
  integer timesteps; after the last one the chain goes to the clean data (lambda = inf). The orders follow
  diffusers' `DPMSolverMultistepScheduler` / `UniPCMultistepScheduler` defaults (`lower_order_final`,
  `final_sigmas_type="zero"`), which `tests/test_solvers.py` checks step for step.

  Args:
    betas: float64 betas of the process the network was trained on, shape `(T,)`.
    timesteps: the network timesteps in sampling order (strictly decreasing) in `[0, T)`
      (`schedules.sampling_timesteps`).
    solver: `dpm_solver++` or `unipc` (its corrector included).
    order: 1, 2 or 3 (UniPC-p: predictor of order p; the corrector raises it by one).
    dtype: floating dtype of the weights.

  Returns:
    The table, to pass (as an argument) to `solver_sample`.
  """
  if solver not in SOLVERS:
    raise ValueError(f"solver = {solver!r} is unknown; allowed: {', '.join(SOLVERS)}.")
  order = _check_order(order)
  betas = schedules.check_betas(betas)
  ts = check_timesteps(timesteps, len(betas))
  n = len(ts)
  with np.errstate(divide="ignore"):  # log(0) = -inf where alpha_bar = 0, refused below
    log_abar = np.cumsum(np.log1p(-betas))[ts]
  if not np.isfinite(log_abar).all():
    raise ValueError(f"timestep {int(ts[0])} has alpha_bar = 0 (zero terminal SNR), where log-SNR is -inf: the "
                     "solvers cannot start there; use ddim_sample or ancestral_sample, or start one step later.")
  alpha = np.append(np.exp(0.5 * log_abar), 1.0)
  sigma = np.append(np.sqrt(-np.expm1(log_abar)), 0.0)
  with np.errstate(divide="ignore"):
    lam = np.log(alpha) - np.log(sigma)  # lam[n] = inf: the clean data
  orders = _step_orders(solver, order, n)
  w = {k: np.zeros(n) for k in ("keep", "last", "new", "scale")}
  w["keep"][:] = 1.0
  history_c, history_p = np.zeros((n, 3)), np.zeros((n, 3))
  for i in range(n):
    if solver == "unipc" and i > 0:  # correct x_i, predicted by step i - 1 at that step's order
      w["last"][i], history_c[i], w["new"][i] = _unipc_weights(lam, alpha, sigma, i - 1, orders[i - 1], True)
      w["keep"][i] = 0.0
    if i == n - 1:  # to the clean data: x = m_i
      history_p[i, 0] = 1.0
    elif solver == "unipc":
      w["scale"][i], history_p[i], _ = _unipc_weights(lam, alpha, sigma, i, orders[i], False)
    else:
      w["scale"][i], history_p[i] = _dpm_solver_pp_weights(lam, alpha, sigma, i, orders[i])
  # history_c[i] weighs (m_{i-1}, m_{i-2}, m_{i-3}); history_p[i] weighs (m_i, m_{i-1}, m_{i-2}).
  cast = lambda a: jax.device_put(np.asarray(a, jnp.dtype(dtype)))
  return SolverTable(timesteps=jax.device_put(ts), alpha=cast(alpha[:n]), sigma=cast(sigma[:n]),
                     keep=cast(w["keep"]), last=cast(w["last"]), history_c=cast(history_c[:, :order]),
                     new=cast(w["new"]), scale=cast(w["scale"]), history_p=cast(history_p[:, :order]))


def data_prediction(out: jax.Array, x: jax.Array, alpha: jax.Array, sigma: jax.Array, model_mean_type: str,
                     clip: bool) -> jax.Array:
  """x_0 from the network's eps (x - sigma eps) / alpha, v (alpha x - sigma v) or x_0 itself; clipped if asked."""
  if model_mean_type == "eps":
    x0 = (x - sigma * out) / alpha
  elif model_mean_type == "v":
    x0 = alpha * x - sigma * out
  else:
    x0 = out
  return jnp.clip(x0, -1.0, 1.0) if clip else x0


def solver_sample(
    table: SolverTable,
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
  """Multistep DPM-Solver++ or UniPC: x_{i+1} = scale_i x_i + sum_k w_ik m_{i-k}, m the data predictions.

  One `lax.scan` over the n steps of `table` (`solver_table`), one network call per step, the last K data
  predictions in the carry. Deterministic: the result is a function of x_T.

    table = solver_table(betas, timesteps=sampling_timesteps(betas, num_steps=20, spacing="logsnr"), solver="unipc")
    draw = jax.jit(lambda p, tab, k: solver_sample(tab, model_fn=lambda x, t: net(p, x, t), shape=shape, key=k))
    x0 = draw(params, table, key)

  Args:
    model_fn: traceable `model_fn(x_t, t) -> output`, mean output only, `t` the original process's step.
    table: the solver's weights.
    shape: `(batch, ...)` of the samples.
    key: PRNG key (x_T only).
    model_mean_type: what the network predicts: `eps`, `xstart` or `v`.
    clip_denoised: clip every data prediction to [-1, 1].
    return_every, sharding, progress, x_T: as in `ancestral_sample`; the trajectory's `x_t` is each step's state before
      its correction.
    inpaint: the known region, replaced by q_sample of its image at each node (after UniPC's correction too).

  Returns:
    x_0 of shape `shape`, and with `return_every` a `Trajectory` as well.
  """
  diffusion.check_model_types(model_mean_type, "fixed_small")
  shape = check_sample_shape(shape)
  K = table.history
  inpaint = check_inpainting(inpaint, shape)

  def step(x: jax.Array, extra: tuple[jax.Array, jax.Array], row: SolverTable, key: jax.Array
           ) -> tuple[jax.Array, tuple[jax.Array, jax.Array], jax.Array]:
    x_last, history = extra
    tb = jnp.full((shape[0],), row.timesteps, dtype=jnp.int32)
    m = data_prediction(mean_output(model_fn(x, tb), x), x, row.alpha, row.sigma, model_mean_type,
                         clip_denoised)
    x = row.keep * x + row.last * x_last + row.new * m + sum(row.history_c[k] * history[k] for k in range(K))
    if inpaint is not None:
      x = replace_known(x, inpaint, row.alpha, row.sigma, jax.random.fold_in(key, 2), sharding)
    history = jnp.concatenate([m[None], history[:-1]])
    x_next = row.scale * x + sum(row.history_p[k] * history[k] for k in range(K))
    return x_next, (x, history), m

  zeros = jnp.zeros(shape, table.alpha.dtype)
  extra = (zeros, jnp.zeros((K, *shape), table.alpha.dtype))
  levels = (jnp.append(table.alpha[1:], 1.0), jnp.append(table.sigma[1:], 0.0))  # each step's result's
  return run_chain(step, table.timesteps, table, shape, key, return_every, sharding, progress, x_T, extra,
                   inpaint=inpaint, levels=levels)

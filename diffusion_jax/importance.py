"""Importance-sampled timesteps (Nichol & Dhariwal 2021, section 3.3): t drawn with probability proportional to
sqrt(E[L_t^2]), estimated from the last `HISTORY` losses of each t, and uniform until every t has that many.

As in their released code, a share `UNIFORM_SHARE` of the probability stays uniform, so that no t is left out,
and the loss of an example drawn at t is weighted by 1 / (T p_t): the weighted mean is an unbiased estimate of
the mean over uniform t. The history is a pytree (`LossHistory`) that a training state carries and a checkpoint
holds, updated inside the compiled step in the batch's order: the result depends on the global batch alone.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp

HISTORY = 10  # losses kept per t
UNIFORM_SHARE = 1e-3  # of the probability spread uniformly over t


@flax.struct.dataclass
class LossHistory:
  """The last `HISTORY` losses of each timestep, newest last, and how many each has (at most `HISTORY`)."""

  losses: jax.Array  # float32, (T, HISTORY)
  counts: jax.Array  # int32, (T,)


def init_history(num_diffusion_steps: int) -> LossHistory:
  """An empty history for T = `num_diffusion_steps` timesteps."""
  return LossHistory(jnp.zeros((num_diffusion_steps, HISTORY), jnp.float32),
                     jnp.zeros((num_diffusion_steps,), jnp.int32))


def probabilities(history: LossHistory) -> jax.Array:
  """p_t = (1 - u) sqrt(mean of t's losses^2) / sum_s sqrt(...) + u / T once every t has `HISTORY` losses (u =
  `UNIFORM_SHARE`), else 1 / T.

  Returns:
    float32 probabilities, shape `(T,)`.
  """
  T = history.counts.shape[0]
  root_mean_square = jnp.sqrt(jnp.mean(jnp.square(history.losses), axis=-1))
  importance = (1.0 - UNIFORM_SHARE) * root_mean_square / jnp.sum(root_mean_square) + UNIFORM_SHARE / T
  warm = jnp.all(history.counts == HISTORY) & (jnp.sum(root_mean_square) > 0)
  return jnp.where(warm, importance, jnp.full((T,), 1.0 / T))


def sample(key: jax.Array, history: LossHistory, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """`batch_size` timesteps drawn from `probabilities(history)`, and the weight 1 / (T p_t) of each.

  Returns:
    (int32 t of shape `(batch_size,)` in `[0, T)` (0 is the paper's t = 1), float32 weights of that shape).
  """
  p = probabilities(history)
  T = p.shape[0]
  t = jax.random.choice(key, T, (batch_size,), p=p).astype(jnp.int32)
  return t, 1.0 / (T * p[t])


def update(history: LossHistory, t: jax.Array, losses: jax.Array) -> LossHistory:
  """`history` with each loss appended to its timestep's row, in the batch's order (the oldest dropped when full).

  Args:
    history: the history.
    t: int timesteps of shape `(batch,)`.
    losses: the per-example losses, shape `(batch,)` (no gradient flows into the history).

  Returns:
    The new history.
  """

  def push(h: LossHistory, tl: tuple[jax.Array, jax.Array]) -> tuple[LossHistory, None]:
    ti, loss = tl
    row, count = h.losses[ti], h.counts[ti]
    full = jnp.append(row[1:], loss)
    filling = row.at[jnp.minimum(count, HISTORY - 1)].set(loss)
    new_row = jnp.where(count == HISTORY, full, filling)
    return LossHistory(h.losses.at[ti].set(new_row), h.counts.at[ti].set(jnp.minimum(count + 1, HISTORY))), None

  losses = jax.lax.stop_gradient(losses).astype(jnp.float32)
  return jax.lax.scan(push, history, (t, losses))[0]

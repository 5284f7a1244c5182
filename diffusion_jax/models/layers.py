"""Layers shared by the DDPM UNet and the toy MLP denoiser."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
  """[sin(t w_i), cos(t w_i)], w_i = 10000^(-i / (dim/2 - 1)), zero-padded to odd `dim`.

  The embedding of Ho et al. (from the Transformer). `t` is the integer
  timestep index in `[0, T)` (`t = 0` is the paper's `t = 1`), as in their code.

  Args:
    t: timesteps, shape `(batch,)`.
    dim: embedding dimension, >= 4.

  Returns:
    float32 array of shape `(batch, dim)`.
  """
  if t.ndim != 1:
    raise ValueError(f"t must have shape (batch,), got {t.shape}.")
  if dim < 4:
    raise ValueError(f"timestep embedding dim must be >= 4, got {dim}.")
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) / (half - 1) * jnp.arange(half, dtype=jnp.float32))
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def default_init(scale: float = 1.0) -> nn.initializers.Initializer:
  """Ho et al.'s initialiser: variance scaling, fan_avg, uniform; scale 0 becomes 1e-10."""
  return nn.initializers.variance_scaling(1e-10 if scale == 0 else scale, "fan_avg", "uniform")

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


class GroupNorm(nn.Module):
  """(x - mean_g) / sqrt(var_g + eps) * scale + bias, as one per-channel affine x * a + b.

  The same function and parameters (`scale`, `bias`) as `flax.linen.GroupNorm`;
  statistics in float32 from one pass (E[x], E[x^2]), then a single fused
  multiply-add per element. On the CPU this makes the UNet's forward pass ~11%
  faster than the generic normalisation (benchmarks/BENCHMARKS.md).
  """

  num_groups: int = 32
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    C = x.shape[-1]
    if C % self.num_groups:
      raise ValueError(f"{C} channels are not divisible by num_groups = {self.num_groups}.")
    per_group = C // self.num_groups
    scale = self.param("scale", nn.initializers.ones, (C,))
    bias = self.param("bias", nn.initializers.zeros, (C,))
    x32 = x.astype(jnp.float32)
    spatial = tuple(range(1, x.ndim - 1))
    n = per_group * math.prod(x.shape[1:-1])
    group_sum = lambda s: s.reshape(x.shape[0], self.num_groups, per_group).sum(-1)  # (B, C) -> (B, G)
    mean = group_sum(jnp.sum(x32, spatial)) / n
    var = jnp.maximum(group_sum(jnp.sum(jnp.square(x32), spatial)) / n - jnp.square(mean), 0.0)
    a = jnp.repeat(jax.lax.rsqrt(var + self.epsilon), per_group, axis=1) * scale  # (B, C)
    b = bias - jnp.repeat(mean, per_group, axis=1) * a
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (C,)
    return (x32 * a.reshape(shape) + b.reshape(shape)).astype(self.dtype)

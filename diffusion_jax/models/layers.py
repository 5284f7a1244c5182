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


def _group_sum(s: jax.Array, num_groups: int) -> jax.Array:
  """(B, C) -> (B, G): sums over the channels of each group."""
  return s.reshape(s.shape[0], num_groups, -1).sum(-1)


def _per_channel(s: jax.Array, num_groups: int, channels: int) -> jax.Array:
  """(B, G) -> (B, C): each group's value for each of its channels."""
  return jnp.repeat(s, channels // num_groups, axis=1)


def _affine(x32: jax.Array, scale: jax.Array, bias: jax.Array, mean: jax.Array, rstd: jax.Array,
            num_groups: int) -> tuple[jax.Array, jax.Array]:
  """The normalisation as one per-channel affine map: a, b of shape (B, 1.., C) with GN(x) = x * a + b."""
  C = x32.shape[-1]
  a = _per_channel(rstd, num_groups, C) * scale
  b = bias - _per_channel(mean, num_groups, C) * a
  shape = (x32.shape[0],) + (1,) * (x32.ndim - 2) + (C,)
  return a.reshape(shape), b.reshape(shape)


def _group_norm_fwd(x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int, epsilon: float, swish: bool,
                    dtype: jnp.dtype) -> tuple[jax.Array, tuple[jax.Array, ...]]:
  x32 = x.astype(jnp.float32)
  spatial = tuple(range(1, x.ndim - 1))
  n = x.shape[-1] // num_groups * math.prod(x.shape[1:-1])
  mean = _group_sum(jnp.sum(x32, spatial), num_groups) / n
  var = jnp.maximum(_group_sum(jnp.sum(jnp.square(x32), spatial), num_groups) / n - jnp.square(mean), 0.0)
  rstd = jax.lax.rsqrt(var + epsilon)
  a, b = _affine(x32, scale, bias, mean, rstd, num_groups)
  y = x32 * a + b
  out = y * jax.nn.sigmoid(y) if swish else y
  return out.astype(dtype), (x, scale, bias, mean, rstd)


def _group_norm_bwd(num_groups: int, epsilon: float, swish: bool, dtype: jnp.dtype, residuals: tuple[jax.Array, ...],
                    g: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  del epsilon, dtype
  x, scale, bias, mean, rstd = residuals
  x32, g32 = x.astype(jnp.float32), g.astype(jnp.float32)
  C = x.shape[-1]
  spatial = tuple(range(1, x.ndim - 1))
  n = C // num_groups * math.prod(x.shape[1:-1])
  a, b = _affine(x32, scale, bias, mean, rstd, num_groups)
  if swish:  # d/dy y sigmoid(y) = s (1 + y (1 - s))
    y = x32 * a + b
    s = jax.nn.sigmoid(y)
    g32 = g32 * s * (1 + y * (1 - s))
  shape = a.shape
  r = _per_channel(rstd, num_groups, C).reshape(shape)
  xhat = (x32 - _per_channel(mean, num_groups, C).reshape(shape)) * r
  s1, s2 = jnp.sum(g32, spatial), jnp.sum(g32 * xhat, spatial)  # (B, C)
  m1 = _per_channel(_group_sum(s1 * scale, num_groups) / n, num_groups, C).reshape(shape)
  m2 = _per_channel(_group_sum(s2 * scale, num_groups) / n, num_groups, C).reshape(shape)
  dx = r * (g32 * scale - m1 - xhat * m2)
  return dx.astype(x.dtype), s2.sum(0), s1.sum(0)


_group_norm = jax.custom_vjp(lambda *args: _group_norm_fwd(*args)[0], nondiff_argnums=(3, 4, 5, 6))
_group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int, epsilon: float, swish: bool,
               dtype: jnp.dtype) -> jax.Array:
  """y = (x - mean_g) / sqrt(var_g + eps) * scale + bias, then y * sigmoid(y) if `swish`.

  Statistics over all positions and the channels of each group, per example, in
  float32 from one pass (E[x], E[x^2]); the map itself is one multiply-add per
  element. The hand-written VJP reads x and the cotangent twice (two (B, C) sums,
  then dx) instead of the many passes autodiff makes of the reshaped graph.

  Args:
    x: (B, ..., C), any float dtype.
    scale, bias: (C,) float32.
    num_groups: G, dividing C.
    epsilon: added to the variance.
    swish: apply y * sigmoid(y) after the normalisation.
    dtype: output dtype.

  Returns:
    Array of x's shape in `dtype`.

  Raises:
    ValueError: C not divisible by `num_groups`, or `scale`/`bias` not of shape (C,).
  """
  if x.ndim < 2:
    raise ValueError(f"x must have shape (batch, ..., channels), got {x.shape}.")
  C = x.shape[-1]
  if C % num_groups:
    raise ValueError(f"{C} channels are not divisible by num_groups = {num_groups}.")
  if scale.shape != (C,) or bias.shape != (C,):
    raise ValueError(f"scale and bias must have shape ({C},), got {scale.shape} and {bias.shape}.")
  return _group_norm(x, scale, bias, num_groups, epsilon, swish, dtype)


class GroupNorm(nn.Module):
  """GroupNorm(x), or swish(GroupNorm(x)) with `swish=True`, as one fused `group_norm`.

  The same function and parameters (`scale`, `bias`) as `flax.linen.GroupNorm`
  (followed by `nn.swish`); on the CPU it is much cheaper, forward and backward
  (BENCHMARKS.md).
  """

  num_groups: int = 32
  epsilon: float = 1e-6
  swish: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    C = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (C,))
    bias = self.param("bias", nn.initializers.zeros, (C,))
    return group_norm(x, scale, bias, self.num_groups, self.epsilon, self.swish, self.dtype)

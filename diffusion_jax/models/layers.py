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


def dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
  """x * m / (1 - p), m ~ Bernoulli(1 - p) per element, with p = rate rounded to a multiple of 2^-16.

  Each element's mask compares 16 random bits with the threshold, so one 32-bit
  word of `jax.random.bits` serves two elements: half the random bits of
  `flax.linen.Dropout`'s uniform floats (one hash per element; BENCHMARKS.md).
  The scale uses the rounded rate, so E[output] = x exactly; the rate itself is
  off by at most 2^-17. The bits depend on the key and each element's index
  only, not on how `x` is sharded.

  Args:
    x: (..., C) array.
    rate: drop probability p in [0, 1).
    key: PRNG key.

  Returns:
    Array of x's shape and dtype.
  """
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout rate must be in [0, 1), got {rate}.")
  threshold = round(rate * 2**16)
  if threshold == 0:
    return x
  *lead, C = x.shape
  words = jax.random.bits(key, (*lead, (C + 1) // 2), jnp.uint32)
  bits = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(*lead, -1)[..., :C]
  scale = jnp.asarray(2**16 / (2**16 - threshold), x.dtype)
  return jnp.where(bits >= threshold, x * scale, jnp.zeros((), x.dtype))


def _group_sum(s: jax.Array, num_groups: int) -> jax.Array:
  """(B, C) -> (B, G): sums over the channels of each group."""
  return s.reshape(s.shape[0], num_groups, -1).sum(-1)


def _per_channel(s: jax.Array, num_groups: int, channels: int) -> jax.Array:
  """(..., G) -> (..., C): each group's value for each of its channels.

  A product with the (G, C) group-membership matrix (exact: one nonzero term per
  output) rather than a broadcast: XLA then computes the (B, C) result once,
  instead of fusing it into every consumer and recomputing the channel's group
  (an integer division that keeps the CPU's loops from vectorising) per element.
  """
  groups = jnp.arange(channels) // (channels // num_groups)
  membership = (groups[None, :] == jnp.arange(num_groups)[:, None]).astype(s.dtype)
  return jnp.dot(s, membership, precision=jax.lax.Precision.HIGHEST)


def _affine(x32: jax.Array, scale: jax.Array, bias: jax.Array, mean: jax.Array, rstd: jax.Array,
            num_groups: int) -> tuple[jax.Array, ...]:
  """GN(x) = x * a + b per channel: (a, b, mean, rstd), each (B, C) and shaped (B, 1.., C) to broadcast."""
  C = x32.shape[-1]
  mean_c, rstd_c = _per_channel(jnp.stack([mean, rstd]), num_groups, C)
  a = rstd_c * scale
  b = bias - mean_c * a
  shape = (x32.shape[0],) + (1,) * (x32.ndim - 2) + (C,)
  return tuple(v.reshape(shape) for v in (a, b, mean_c, rstd_c))


def _group_norm_fwd(x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int, epsilon: float, swish: bool,
                    dtype: jnp.dtype) -> tuple[jax.Array, tuple[jax.Array, ...]]:
  x32 = x.astype(jnp.float32)
  spatial = tuple(range(1, x.ndim - 1))
  n = x.shape[-1] // num_groups * math.prod(x.shape[1:-1])
  mean = _group_sum(jnp.sum(x32, spatial), num_groups) / n
  var = jnp.maximum(_group_sum(jnp.sum(jnp.square(x32), spatial), num_groups) / n - jnp.square(mean), 0.0)
  rstd = jax.lax.rsqrt(var + epsilon)
  a, b, _, _ = _affine(x32, scale, bias, mean, rstd, num_groups)
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
  a, b, mean_c, r = _affine(x32, scale, bias, mean, rstd, num_groups)
  if swish:  # d/dy y sigmoid(y) = s (1 + y (1 - s))
    y = x32 * a + b
    s = jax.nn.sigmoid(y)
    g32 = g32 * s * (1 + y * (1 - s))
  xhat = (x32 - mean_c) * r
  s1, s2 = jnp.sum(g32, spatial), jnp.sum(g32 * xhat, spatial)  # (B, C)
  m1, m2 = _per_channel(_group_sum(jnp.concatenate([s1, s2]) * scale, num_groups) / n, num_groups, C).reshape(
      (2,) + a.shape)
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

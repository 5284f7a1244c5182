"""The DDPM UNet of Ho et al. (2020), `unet2d16b2` in their `diffusion_tf/models/unet.py`.

Parameter-for-parameter the paper's network: the CIFAR-10 configuration
(`ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,)`) has
35,746,307 parameters. Inputs are NHWC; `t` is the integer timestep index in
`[0, T)` (`t = 0` is the paper's `t = 1`).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.layers import GroupNorm, default_init, dropout, timestep_embedding


class ResnetBlock(nn.Module):
  """x + conv(dropout(swish(GN(conv(swish(GN(x))) + Dense(swish(temb)))))), 1x1 shortcut if channels change."""

  out_ch: int
  dropout: float
  num_groups: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, train: bool) -> jax.Array:
    norm = lambda name: GroupNorm(self.num_groups, epsilon=1e-6, swish=True, dtype=self.dtype, name=name)
    conv = lambda scale, name: nn.Conv(self.out_ch, (3, 3), padding="SAME", dtype=self.dtype,
                                       kernel_init=default_init(scale), name=name)
    h = conv(1.0, "conv1")(norm("norm1")(x))
    h = h + nn.Dense(self.out_ch, dtype=self.dtype, kernel_init=default_init(), name="temb_proj")(
        nn.swish(temb))[:, None, None, :]
    h = norm("norm2")(h)
    if train and self.dropout > 0:
      h = dropout(h, self.dropout, self.make_rng("dropout"))
    h = conv(0.0, "conv2")(h)
    if x.shape[-1] != self.out_ch:
      x = nn.Dense(self.out_ch, dtype=self.dtype, kernel_init=default_init(), name="nin_shortcut")(x)
    return x + h


class AttnBlock(nn.Module):
  """x + proj(softmax(q k^T / sqrt(C)) v) over all H*W positions, one head."""

  num_groups: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    B, H, W, C = x.shape
    h = GroupNorm(self.num_groups, epsilon=1e-6, dtype=self.dtype, name="norm")(x)
    dense = lambda scale, name: nn.Dense(C, dtype=self.dtype, kernel_init=default_init(scale), name=name)
    q, k, v = (dense(1.0, n)(h).reshape(B, H * W, C) for n in ("q", "k", "v"))
    logits = jnp.einsum("bic,bjc->bij", q, k).astype(jnp.float32) * C**-0.5
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    h = jnp.einsum("bij,bjc->bic", weights, v).reshape(B, H, W, C)
    return x + dense(0.0, "proj_out")(h)


class UNet(nn.Module):
  """eps_theta(x_t, t[, y]): the DDPM UNet.

  Attributes:
    ch: base channels (also the timestep-embedding dimension).
    ch_mult: channel multiplier per resolution level; level i halves the size i times.
    num_res_blocks: ResNet blocks per level going down (one more going up).
    attn_resolutions: spatial sizes (height) at which self-attention follows every block.
    dropout: dropout rate inside the ResNet blocks (training only; `layers.dropout`, p to 2^-16).
    out_channels: output channels; None for the input's (twice that for learned variance).
    num_classes: class-conditional when set: label embedding added to the time
      embedding; label `num_classes` is the null label for classifier-free guidance.
    num_groups: GroupNorm groups; every channel count must divide by it.
    dtype: compute dtype (e.g. bfloat16); parameters stay float32.
    remat: rematerialise each ResNet and attention block in the backward pass.
  """

  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  out_channels: int | None = None
  num_classes: int | None = None
  num_groups: int = 32
  dtype: jnp.dtype = jnp.float32
  remat: bool = False

  def check(self, image_shape: Sequence[int]) -> None:
    """Raises `ValueError` if this configuration cannot take images of shape (H, W, C)."""
    if len(image_shape) != 3:
      raise ValueError(f"UNet needs images of shape (H, W, C), got {tuple(image_shape)}.")
    H, W, _ = image_shape
    levels = len(self.ch_mult)
    for key, value, ok, allowed in [
        ("ch", self.ch, isinstance(self.ch, int) and self.ch >= 1, "a positive integer"),
        ("ch_mult", tuple(self.ch_mult), levels >= 1 and all(isinstance(m, int) and m >= 1 for m in self.ch_mult),
         "a non-empty sequence of positive integers"),
        ("num_res_blocks", self.num_res_blocks, isinstance(self.num_res_blocks, int) and self.num_res_blocks >= 1,
         "a positive integer"),
        ("dropout", self.dropout, 0.0 <= self.dropout < 1.0, "a rate in [0, 1)"),
        ("num_classes", self.num_classes, self.num_classes is None or self.num_classes >= 1,
         "None or a positive integer"),
    ]:
      if not ok:
        raise ValueError(f"model.{key} = {value!r} is invalid; it must be {allowed}.")
    factor = 2 ** (levels - 1)
    if H % factor or W % factor:
      raise ValueError(
          f"image size {H}x{W} is not divisible by 2^(levels - 1) = {factor} for model.ch_mult = "
          f"{tuple(self.ch_mult)}: use fewer levels or an image size divisible by {factor}.")
    for c in sorted({self.ch * m for m in self.ch_mult}):
      if c % self.num_groups:
        raise ValueError(
            f"model.ch * ch_mult gives {c} channels, not divisible by model.num_groups = "
            f"{self.num_groups}: choose ch divisible by {self.num_groups} (or change num_groups).")
    sizes = {H // 2**i for i in range(levels)}
    missing = sorted(set(self.attn_resolutions) - sizes)
    if missing:
      raise ValueError(
          f"model.attn_resolutions {tuple(self.attn_resolutions)} includes {missing}, which no level "
          f"of a {H}x{W} input has; the levels have sizes {sorted(sizes, reverse=True)}.")

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None, *, train: bool = False) -> jax.Array:
    """Network output at (x_t, t).

    Args:
      x: images, shape `(batch, H, W, C)`.
      t: int timesteps, shape `(batch,)`.
      y: int labels in `[0, num_classes]`, shape `(batch,)`; None means the
        null label. Only for class-conditional models.
      train: enables dropout (needs the `dropout` rng).

    Returns:
      float32 array of shape `(batch, H, W, out_channels or C)`.
    """
    self.check(x.shape[1:])
    if t.shape != x.shape[:1]:
      raise ValueError(f"t must have shape (batch,) = {x.shape[:1]}, got {t.shape}.")
    if y is not None and self.num_classes is None:
      raise ValueError("labels y were given to an unconditional UNet (model.num_classes is None).")
    out_ch = self.out_channels or x.shape[-1]
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, kernel_init=default_init(), name=name)
    conv = lambda n, name, scale=1.0, strides=(1, 1): nn.Conv(
        n, (3, 3), strides, padding="SAME", dtype=self.dtype, kernel_init=default_init(scale), name=name)
    block_cls = nn.remat(ResnetBlock, static_argnums=(3,)) if self.remat else ResnetBlock
    attn_cls = nn.remat(AttnBlock) if self.remat else AttnBlock
    block = lambda n, name: block_cls(n, self.dropout, self.num_groups, self.dtype, name=name)
    attn = lambda name: attn_cls(self.num_groups, self.dtype, name=name)

    temb = timestep_embedding(t, self.ch)
    temb = dense(4 * self.ch, "temb_dense1")(nn.swish(dense(4 * self.ch, "temb_dense0")(temb)))
    if self.num_classes is not None:
      labels = jnp.full(t.shape, self.num_classes, jnp.int32) if y is None else y
      temb = temb + nn.Embed(self.num_classes + 1, 4 * self.ch, dtype=self.dtype, name="label_emb")(labels)

    hs = [conv(self.ch, "conv_in")(x.astype(self.dtype))]
    for i, mult in enumerate(self.ch_mult):
      for j in range(self.num_res_blocks):
        h = block(self.ch * mult, f"down_{i}_block_{j}")(hs[-1], temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn(f"down_{i}_attn_{j}")(h)
        hs.append(h)
      if i != len(self.ch_mult) - 1:
        hs.append(conv(hs[-1].shape[-1], f"down_{i}_downsample", strides=(2, 2))(hs[-1]))

    h = block(hs[-1].shape[-1], "mid_block_1")(hs[-1], temb, train)
    h = attn("mid_attn_1")(h)
    h = block(h.shape[-1], "mid_block_2")(h, temb, train)

    for i, mult in reversed(list(enumerate(self.ch_mult))):
      for j in range(self.num_res_blocks + 1):
        h = block(self.ch * mult, f"up_{i}_block_{j}")(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn(f"up_{i}_attn_{j}")(h)
      if i != 0:
        h = conv(h.shape[-1], f"up_{i}_upsample")(jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2))

    h = GroupNorm(self.num_groups, epsilon=1e-6, swish=True, dtype=self.dtype, name="norm_out")(h)
    return conv(out_ch, "conv_out", scale=0.0)(h).astype(jnp.float32)

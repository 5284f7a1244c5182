"""The name map between diffusers' `UNet2DModel` state dict and our `UNet`'s parameters, and the layout changes
(convolutions (O, I, kh, kw) there, (kh, kw, I, O) here; linear layers (O, I) and (I, O)).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from diffusion_jax.models.unet import UNet

_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One diffusers tensor and the flax parameter it is: `kind` says how the layouts differ."""

  name: str  # diffusers' state-dict name
  path: tuple[str, ...]  # our parameter path
  kind: str  # conv, linear, shortcut (1x1 conv <-> Dense), norm_scale, bias, embedding


def _layer(torch_name: str, path: tuple[str, ...], kind: str) -> Iterator[Tensor]:
  """The tensors of one layer: weight and bias (GroupNorm: weight is the scale; Embed: no bias)."""
  if kind == "norm":
    yield Tensor(f"{torch_name}.weight", (*path, "scale"), "norm_scale")
  elif kind == "embedding":
    yield Tensor(f"{torch_name}.weight", (*path, "embedding"), "embedding")
    return
  else:
    yield Tensor(f"{torch_name}.weight", (*path, "kernel"), kind)
  yield Tensor(f"{torch_name}.bias", (*path, "bias"), "bias")


def _resnet(torch_name: str, ours: str, shortcut: bool) -> Iterator[Tensor]:
  for theirs, mine, kind in [("norm1", "norm1", "norm"), ("conv1", "conv1", "conv"), ("time_emb_proj", "temb_proj",
                             "linear"), ("norm2", "norm2", "norm"), ("conv2", "conv2", "conv")]:
    yield from _layer(f"{torch_name}.{theirs}", (ours, mine), kind)
  if shortcut:
    yield from _layer(f"{torch_name}.conv_shortcut", (ours, "nin_shortcut"), "shortcut")


def _attention(torch_name: str, ours: str) -> Iterator[Tensor]:
  yield from _layer(f"{torch_name}.group_norm", (ours, "norm"), "norm")
  for theirs, mine in [("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]:
    yield from _layer(f"{torch_name}.{theirs}", (ours, mine), "linear")


def tensor_map(model: UNet, image_size: int) -> list[Tensor]:
  """Every tensor of diffusers' `UNet2DModel` of `model`'s layout, with our parameter it is, in state-dict order.

  Args:
    model: our UNet.
    image_size: H (= W) of its inputs; it places the attention levels.
  """
  ch, L, R = model.ch, len(model.ch_mult), model.num_res_blocks
  out = list(_layer("conv_in", ("conv_in",), "conv"))
  out += _layer("time_embedding.linear_1", ("temb_dense0",), "linear")
  out += _layer("time_embedding.linear_2", ("temb_dense1",), "linear")
  if model.num_classes is not None:
    out += _layer("class_embedding", ("label_emb",), "embedding")
  channels, skips = ch, [ch]
  for i, mult in enumerate(model.ch_mult):
    attn = image_size // 2**i in model.attn_resolutions
    for j in range(R):
      out += _resnet(f"down_blocks.{i}.resnets.{j}", f"down_{i}_block_{j}", channels != ch * mult)
      channels = ch * mult
      if attn:
        out += _attention(f"down_blocks.{i}.attentions.{j}", f"down_{i}_attn_{j}")
      skips.append(channels)
    if i != L - 1:
      out += _layer(f"down_blocks.{i}.downsamplers.0.conv", (f"down_{i}_downsample",), "conv")
      skips.append(channels)
  out += _resnet("mid_block.resnets.0", "mid_block_1", False)
  out += _attention("mid_block.attentions.0", "mid_attn_1")
  out += _resnet("mid_block.resnets.1", "mid_block_2", False)
  for i, mult in reversed(list(enumerate(model.ch_mult))):
    k = L - 1 - i
    attn = image_size // 2**i in model.attn_resolutions
    for j in range(R + 1):
      out += _resnet(f"up_blocks.{k}.resnets.{j}", f"up_{i}_block_{j}", channels + skips.pop() != ch * mult)
      channels = ch * mult
      if attn:
        out += _attention(f"up_blocks.{k}.attentions.{j}", f"up_{i}_attn_{j}")
    if i != 0:
      out += _layer(f"up_blocks.{k}.upsamplers.0.conv", (f"up_{i}_upsample",), "conv")
  out += _layer("conv_norm_out", ("norm_out",), "norm")
  out += _layer("conv_out", ("conv_out",), "conv")
  return out


def _to_flax(kind: str, w: np.ndarray) -> np.ndarray:
  if kind == "conv":
    return w.transpose(2, 3, 1, 0)
  if kind == "linear":
    return w.T
  if kind == "shortcut":
    return w[:, :, 0, 0].T
  return w


def _to_torch(kind: str, w: np.ndarray) -> np.ndarray:
  if kind == "conv":
    return w.transpose(3, 2, 0, 1)
  if kind == "linear":
    return w.T
  if kind == "shortcut":
    return w.T[:, :, None, None]
  return w


def modern_name(name: str) -> str:
  """`...attentions.N.query.weight` (the 2022 uploads) -> `...attentions.N.to_q.weight`; other names unchanged."""
  head, _, tail = name.rpartition(".")  # tail: weight or bias
  stem, _, layer = head.rpartition(".")
  if ".attentions." in name and layer in _LEGACY_ATTENTION:
    return f"{stem}.{_LEGACY_ATTENTION[layer]}.{tail}"
  return name


def params_from_state_dict(state_dict: dict[str, np.ndarray], model: UNet,
                           image_shape: tuple[int, int, int]) -> dict[str, Any]:
  """Our UNet's parameters (float32) from a diffusers `UNet2DModel` state dict of the same layout.

  Args:
    state_dict: tensor name -> array, in either attention naming.
    model: our UNet of the checkpoint's layout (`unet_from_config`).
    image_shape: (H, W, C) of its inputs.

  Returns:
    The `params` collection, shapes as `model.init` makes them.

  Raises:
    ValueError: a tensor is missing, unknown (not of this layout), or of the wrong shape; each is named.
  """
  expected = _param_shapes(model, image_shape)
  given = {}
  for name, array in state_dict.items():
    modern = modern_name(name)
    if modern in given:
      raise ValueError(f"tensor {name!r} appears twice (as {modern!r} too).")
    given[modern] = (name, np.asarray(array))
  flat = {}
  for t in tensor_map(model, image_shape[0]):
    if t.name not in given:
      raise ValueError(f"tensor {t.name!r} is missing from the checkpoint; it is needed for our {'/'.join(t.path)}.")
    name, array = given.pop(t.name)
    value = _to_flax(t.kind, array)
    if value.shape != expected[t.path]:
      shape = _to_torch(t.kind, np.zeros(expected[t.path], np.int8)).shape
      raise ValueError(f"tensor {name!r} has shape {array.shape}; this layout needs {shape}.")
    flat[t.path] = value.astype(np.float32)
  if given:
    names = sorted(name for name, _ in given.values())
    raise ValueError(f"{len(names)} tensor(s) of the checkpoint are not part of this layout: {names[:8]}"
                     f"{' ...' if len(names) > 8 else ''}.")
  return traverse_util.unflatten_dict(flat)


def state_dict_from_params(params: dict[str, Any], model: UNet, image_shape: tuple[int, int, int],
                           dtype: np.dtype = np.float32) -> dict[str, np.ndarray]:
  """diffusers' `UNet2DModel` state dict (current names) of our UNet's parameters.

  Raises:
    ValueError: `params` is not a parameter tree of `model` for `image_shape`.
  """
  flat = traverse_util.flatten_dict(jax.device_get(params))
  expected = _param_shapes(model, image_shape)
  if set(flat) != set(expected) or any(np.shape(flat[p]) != s for p, s in expected.items()):
    wrong = sorted("/".join(p) for p in set(flat) ^ set(expected)) or sorted(
        "/".join(p) for p, s in expected.items() if np.shape(flat[p]) != s)
    raise ValueError(f"params do not match the model for images of shape {image_shape}: {wrong[:8]}.")
  return {t.name: np.ascontiguousarray(_to_torch(t.kind, np.asarray(flat[t.path])).astype(dtype))
          for t in tensor_map(model, image_shape[0])}


def _param_shapes(model: UNet, image_shape: tuple[int, int, int]) -> dict[tuple[str, ...], tuple[int, ...]]:
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape)), jnp.zeros((1,), jnp.int32))
  return {p: s.shape for p, s in traverse_util.flatten_dict(shapes["params"]).items()}

"""Diffusers-format DDPM checkpoints in and out: `UNet2DModel` + `DDPMScheduler` directories.

The published DDPM weights (`google/ddpm-cifar10-32`, `google/ddpm-ema-cifar10-32`,
`google/ddpm-{celebahq,church,bedroom,cat}-256`, ...) are directories of

    config.json                              the UNet2DModel's layout
    diffusion_pytorch_model.safetensors      the weights (or diffusion_pytorch_model.bin)
    scheduler_config.json                    the DDPMScheduler (either here or in scheduler/)

with the UNet under `unet/` in a pipeline's directory. `load(directory)` reads
one into our `UNet`'s parameters and our schedule's names, with NumPy only (no
torch): safetensors by its header, `.bin` (PyTorch's zip format) through an
unpickler that rebuilds tensors and accepts no other object. `save` writes the
same format back, so a model trained here loads with
`diffusers.UNet2DModel.from_pretrained`.

Names: diffusers' `down_blocks.{i}.resnets.{j}` is our `down_{i}_block_{j}`;
its `up_blocks.{k}` is our `up_{L-1-k}_*` (diffusers numbers the up path from
the bottom); the attention's `to_q/to_k/to_v/to_out.0` (or the older
`query/key/value/proj_attn` of the 2022 uploads) are our `q/k/v/proj_out`.
Convolutions are (O, I, kh, kw) there and (kh, kw, I, O) here; linear layers and
1x1 shortcuts are (O, I) and (I, O). A class-conditional UNet's label embedding is
diffusers' `class_embedding` with `num_class_embeds = num_classes + 1`, the last row
our null label. Layouts our UNet does not compute (other
block types, several heads, symmetric downsampling padding, ...) are refused
with the config key that says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util

from diffusion_jax import schedules
from diffusion_jax.models.unet import UNet

WEIGHTS_SAFETENSORS = "diffusion_pytorch_model.safetensors"
WEIGHTS_BIN = "diffusion_pytorch_model.bin"
UNET_CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_TORCH_STORAGES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


# ----------------------------------------------------------------------------------------------- tensor files


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """The tensors of a `.safetensors` file, as NumPy arrays (bfloat16 as `ml_dtypes.bfloat16`).

  Raises:
    ValueError: the file is not a well-formed safetensors file, naming the tensor at fault.
  """
  with open(path, "rb") as f:
    blob = f.read()
  if len(blob) < 8:
    raise ValueError(f"{path} is not a safetensors file: {len(blob)} bytes.")
  n = int.from_bytes(blob[:8], "little")
  try:
    header = json.loads(blob[8:8 + n])
  except ValueError as e:
    raise ValueError(f"{path} is not a safetensors file: its header is not JSON ({e}).") from None
  data = memoryview(blob)[8 + n:]
  out = {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    dtype = _SAFETENSORS_DTYPES.get(entry.get("dtype"))
    if dtype is None:
      raise ValueError(f"{path}: tensor {name!r} has dtype {entry.get('dtype')!r}; "
                       f"readable: {sorted(_SAFETENSORS_DTYPES)}.")
    begin, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    if end - begin != np.dtype(dtype).itemsize * int(np.prod(shape)) or end > len(data):
      raise ValueError(f"{path}: tensor {name!r} of shape {shape} does not fit its data offsets [{begin}, {end}).")
    out[name] = np.frombuffer(data[begin:end], dtype).reshape(shape).copy()
  return out


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
  """Writes `tensors` as a `.safetensors` file (atomically: a temporary file, then a rename)."""
  names = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}
  header, offset, chunks = {}, 0, []
  for name in sorted(tensors):
    array = np.ascontiguousarray(tensors[name])
    if array.dtype not in names:
      raise ValueError(f"tensor {name!r} has dtype {array.dtype}; writable: {sorted(map(str, names))}.")
    raw = array.tobytes()
    header[name] = {"dtype": names[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  if metadata:
    header["__metadata__"] = dict(metadata)
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(len(encoded).to_bytes(8, "little"))
    f.write(encoded)
    for raw in chunks:
      f.write(raw)
  os.replace(tmp, path)


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                    *unused: Any) -> np.ndarray:
  """torch._utils._rebuild_tensor_v2 for NumPy: the strided view of a flat storage, copied."""
  del unused
  item = storage.itemsize
  return np.lib.stride_tricks.as_strided(storage[offset:], tuple(size), [s * item for s in stride]).copy()


class _TorchUnpickler(pickle.Unpickler):
  """Unpickles a PyTorch state dict into NumPy arrays; any object but tensors and dicts is refused."""

  def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str, path: str):
    super().__init__(file)
    self.archive, self.prefix, self.path = archive, prefix, path

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) == ("collections", "OrderedDict"):
      return OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _rebuild_tensor
    if (module, name) == ("torch._utils", "_rebuild_parameter"):
      return lambda data, *unused: data
    if module == "torch" and name in _TORCH_STORAGES:
      return np.dtype(_TORCH_STORAGES[name])
    raise pickle.UnpicklingError(f"{self.path} holds a {module}.{name}, which a state dict of tensors does not; "
                                 "it is not read (only tensors are).")

  def persistent_load(self, pid: Any) -> np.ndarray:
    _, dtype, key, _, _ = pid
    if not isinstance(dtype, np.dtype):
      raise pickle.UnpicklingError(f"{self.path}: storage {key} has an unknown type {dtype!r}.")
    return np.frombuffer(self.archive.read(f"{self.prefix}/data/{key}"), dtype)


def read_torch_bin(path: str) -> dict[str, np.ndarray]:
  """The tensors of a PyTorch `torch.save` state dict (zip format), without torch.

  Raises:
    ValueError: not a zip-format state dict of tensors (e.g. the pre-1.6 format, or arbitrary objects).
  """
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path} is not a zip-format PyTorch file (torch >= 1.6 writes one); convert it to "
                     "safetensors, e.g. with diffusers' save_pretrained.")
  with zipfile.ZipFile(path) as archive:
    pkl = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(pkl) != 1:
      raise ValueError(f"{path} is a zip file without a PyTorch data.pkl.")
    prefix = pkl[0][:-len("/data.pkl")]
    order = archive.read(f"{prefix}/byteorder").decode() if f"{prefix}/byteorder" in archive.namelist() else "little"
    if order != "little":
      raise ValueError(f"{path} was written in {order}-endian byte order; only little-endian is read.")
    with archive.open(pkl[0]) as f:
      try:
        state = _TorchUnpickler(f, archive, prefix, path).load()
      except pickle.UnpicklingError as e:
        raise ValueError(str(e)) from None
  if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
    raise ValueError(f"{path} does not hold a state dict of tensors.")
  return dict(state)


# ----------------------------------------------------------------------------------------------- names


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


def _modern_name(name: str) -> str:
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
    modern = _modern_name(name)
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


# ----------------------------------------------------------------------------------------------- configs


def _refuse(file: str, key: str, value: Any, allowed: str) -> ValueError:
  return ValueError(f"{file}: {key} = {value!r} is a layout our UNet does not compute; supported: {allowed}.")


# UNet2DModel's defaults (diffusers 0.42), for the keys a config.json leaves out.
UNET2D_DEFAULTS = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D", "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D",
                                                           "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896], "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0, "act_fn": "silu",
    "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None, "num_class_embeds": None,
    "num_train_timesteps": None,
}
# The values of the DDPM layout, which our UNet computes: key -> (value, as said in an error).
_DDPM_LAYOUT = {
    "act_fn": ("silu", "silu"), "norm_eps": (1e-6, "1e-06"), "downsample_padding": (0, "0 (TensorFlow's SAME)"),
    "flip_sin_to_cos": (False, "false"), "freq_shift": (1, "1"), "time_embedding_type": ("positional", "positional"),
    "center_input_sample": (False, "false"), "mid_block_scale_factor": (1, "1"), "downsample_type": ("conv", "conv"),
    "upsample_type": ("conv", "conv"), "mid_block_type": ("UNetMidBlock2D", "UNetMidBlock2D"),
    "resnet_time_scale_shift": ("default", "default"), "add_attention": (True, "true"),
    "class_embed_type": (None, "null"), "attn_norm_num_groups": (None, "null"),
    "num_train_timesteps": (None, "null"), "time_embedding_dim": (None, "null"),
}


def unet_from_config(cfg: dict[str, Any], file: str = UNET_CONFIG) -> tuple[UNet, tuple[int, int, int]]:
  """Our UNet (float32) of a diffusers `UNet2DModel` config.json, and the (H, W, C) it takes.

  Keys the file leaves out take UNet2DModel's defaults, as diffusers reads it.

  Raises:
    ValueError: a key that our UNet cannot reproduce, or does not know, naming it, its value and what is supported.
  """
  if cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
    raise _refuse(file, "_class_name", cfg["_class_name"], "UNet2DModel")
  unknown = sorted(k for k in cfg if k not in UNET2D_DEFAULTS and not k.startswith("_"))
  if unknown:
    raise ValueError(f"{file}: keys {unknown} are not UNet2DModel arguments this reader knows: "
                     f"{sorted(UNET2D_DEFAULTS)}.")
  cfg = {**UNET2D_DEFAULTS, **cfg}
  for key, (value, allowed) in _DDPM_LAYOUT.items():
    if cfg[key] != value:
      raise _refuse(file, key, cfg[key], allowed)
  widths = list(cfg["block_out_channels"])
  ch = widths[0]
  if any(w % ch for w in widths):
    raise _refuse(file, "block_out_channels", widths, f"multiples of the first width ({ch})")
  size = cfg["sample_size"]
  size = size if isinstance(size, int) else size[0] if len(set(size)) == 1 else None
  if size is None:
    raise _refuse(file, "sample_size", cfg["sample_size"], "square images")
  down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
  if any(b not in ("DownBlock2D", "AttnDownBlock2D") for b in down) or len(down) != len(widths):
    raise _refuse(file, "down_block_types", down, f"{len(widths)} of DownBlock2D, AttnDownBlock2D")
  mirror = [b.replace("Down", "Up") for b in reversed(down)]
  if up != mirror:
    raise _refuse(file, "up_block_types", up, f"the down path mirrored: {mirror}")
  heads = cfg["attention_head_dim"]
  attn_widths = [widths[i] for i, b in enumerate(down) if b.startswith("Attn")] + [widths[-1]]
  if heads is not None and any(heads != w for w in attn_widths):
    raise _refuse(file, "attention_head_dim", heads,
                  f"null (one head as wide as the block: {sorted(set(attn_widths))})")
  in_ch, out_ch = cfg["in_channels"], cfg["out_channels"]
  if out_ch not in (in_ch, 2 * in_ch):
    raise _refuse(file, "out_channels", out_ch, f"in_channels ({in_ch}), or twice it (learned variance)")
  num_class_embeds = cfg["num_class_embeds"]
  model = UNet(
      ch=ch, ch_mult=tuple(w // ch for w in widths), num_res_blocks=cfg["layers_per_block"],
      attn_resolutions=tuple(size // 2**i for i, b in enumerate(down) if b.startswith("Attn")),
      dropout=cfg["dropout"], out_channels=None if out_ch == in_ch else out_ch,
      num_classes=None if num_class_embeds is None else num_class_embeds - 1, num_groups=cfg["norm_num_groups"])
  shape = (size, size, in_ch)
  model.check(shape)
  return model, shape


def config_from_unet(model: UNet, image_shape: tuple[int, int, int]) -> dict[str, Any]:
  """diffusers' `UNet2DModel` config.json of our UNet for images of `image_shape`."""
  H, W, C = image_shape
  if H != W:
    raise ValueError(f"diffusers' UNet2DModel takes square images; got {H}x{W}.")
  attn = [H // 2**i in model.attn_resolutions for i in range(len(model.ch_mult))]
  down = ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn]
  return {
      "_class_name": "UNet2DModel", "sample_size": H, "in_channels": C, "out_channels": model.out_channels or C,
      "block_out_channels": [model.ch * m for m in model.ch_mult], "layers_per_block": model.num_res_blocks,
      "down_block_types": down, "up_block_types": [b.replace("Down", "Up") for b in reversed(down)],
      "attention_head_dim": None, "norm_num_groups": model.num_groups, "norm_eps": 1e-6, "act_fn": "silu",
      "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "time_embedding_type": "positional",
      "center_input_sample": False, "mid_block_scale_factor": 1, "dropout": model.dropout,
      "num_class_embeds": None if model.num_classes is None else model.num_classes + 1,
  }


_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "quadratic", "squaredcos_cap_v2": "cosine",
                   "sigmoid": "sigmoid"}
_VARIANCES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small", "fixed_large": "fixed_large",
              "fixed_large_log": "fixed_large", "learned_range": "learned_range"}
_PREDICTIONS = {"epsilon": "eps", "sample": "xstart", "v_prediction": "v"}


def betas(keys: dict[str, Any]) -> np.ndarray:
  """The float64 betas of our dotted config keys (`diffusion_from_scheduler`), shape (T,)."""
  kwargs = {k.rsplit(".", 1)[1]: v for k, v in keys.items() if k.startswith("diffusion.beta_kwargs.")}
  return schedules.get_beta_schedule(keys["diffusion.beta_schedule"],
                                     num_diffusion_steps=keys["diffusion.num_diffusion_steps"], **kwargs)


def _invert(d: dict[str, str]) -> dict[str, str]:
  return {v: k for k, v in d.items()}


def diffusion_from_scheduler(cfg: dict[str, Any], file: str = SCHEDULER_CONFIG) -> dict[str, Any]:
  """Our config keys of a diffusers `DDPMScheduler` scheduler_config.json.

  Returns:
    Dotted config keys: `diffusion.num_diffusion_steps`, `diffusion.beta_schedule`,
    `diffusion.beta_kwargs.*`, `diffusion.model_mean_type`, `diffusion.model_var_type`,
    `sampling.clip_denoised`.

  Raises:
    ValueError: a key our schedule or sampler does not reproduce.
  """
  for key, value, allowed in [("thresholding", False, "false"), ("clip_sample_range", 1.0, "1.0"),
                              ("rescale_betas_zero_snr", False, "false")]:
    if key in cfg and cfg[key] != value:
      raise ValueError(f"{file}: {key} = {cfg[key]!r} is not reproduced here; supported: {allowed}.")
  keys: dict[str, Any] = {"diffusion.num_diffusion_steps": cfg.get("num_train_timesteps", 1000)}
  trained = cfg.get("trained_betas")
  if trained is not None:
    keys.update({"diffusion.beta_schedule": "custom", "diffusion.beta_kwargs.betas": tuple(map(float, trained))})
  else:
    name = cfg.get("beta_schedule", "linear")
    if name not in _BETA_SCHEDULES:
      raise ValueError(f"{file}: beta_schedule = {name!r} is not reproduced here; supported: "
                       f"{sorted(_BETA_SCHEDULES)} or trained_betas.")
    keys["diffusion.beta_schedule"] = _BETA_SCHEDULES[name]
    if name != "squaredcos_cap_v2":
      keys["diffusion.beta_kwargs.beta_start"] = float(cfg.get("beta_start", 1e-4))
      keys["diffusion.beta_kwargs.beta_end"] = float(cfg.get("beta_end", 0.02))
  for key, table, ours, default in [("variance_type", _VARIANCES, "diffusion.model_var_type", "fixed_small"),
                                    ("prediction_type", _PREDICTIONS, "diffusion.model_mean_type", "epsilon")]:
    value = cfg.get(key, default)
    if value not in table:
      raise ValueError(f"{file}: {key} = {value!r} is not reproduced here; supported: {sorted(table)}.")
    keys[ours] = table[value]
  keys["sampling.clip_denoised"] = bool(cfg.get("clip_sample", True))
  return keys


def scheduler_from_diffusion(keys: dict[str, Any], betas: np.ndarray) -> dict[str, Any]:
  """diffusers' `DDPMScheduler` scheduler_config.json of our config keys (`diffusion_from_scheduler`'s inverse).

  Args:
    keys: our dotted config keys, as `diffusion_from_scheduler` returns them.
    betas: the float64 betas they make, shape (T,); they go as `trained_betas` when diffusers has no
      name for the schedule (sigmoid, constant, custom, a cosine with other arguments).
  """
  name = keys["diffusion.beta_schedule"]
  cfg = {"_class_name": "DDPMScheduler", "num_train_timesteps": len(betas),
         "variance_type": keys["diffusion.model_var_type"],  # ours are named as diffusers' are
         "prediction_type": _invert(_PREDICTIONS)[keys["diffusion.model_mean_type"]],
         "clip_sample": bool(keys["sampling.clip_denoised"]), "clip_sample_range": 1.0,
         "beta_schedule": "linear", "trained_betas": None}
  default_cosine = all(keys.get(f"diffusion.beta_kwargs.{k}") in (None, v) for k, v in [("s", 0.008),
                                                                                          ("max_beta", 0.999)])
  if name in ("linear", "quadratic"):  # both are fixed by their end points
    cfg.update(beta_schedule=_invert(_BETA_SCHEDULES)[name], beta_start=float(betas[0]), beta_end=float(betas[-1]))
  elif name == "cosine" and default_cosine:
    cfg["beta_schedule"] = "squaredcos_cap_v2"
  else:
    cfg["trained_betas"] = [float(b) for b in betas]
  return cfg


# ----------------------------------------------------------------------------------------------- directories


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """A diffusers-format checkpoint in our terms."""

  model: UNet
  image_shape: tuple[int, int, int]  # (H, W, C)
  params: dict[str, Any]  # float32 NumPy, the UNet's `params` collection
  config: dict[str, Any]  # our dotted config keys (`diffusion_from_scheduler`)


def _find(directory: str, name: str) -> str | None:
  for sub in ("", "unet", "scheduler"):
    path = os.path.join(directory, sub, name)
    if os.path.isfile(path):
      return path
  return None


def _read_json(path: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from None


def _files(directory: str) -> dict[str, str | None]:
  """The paths of the config files and weights in `directory` (or its unet/ and scheduler/); FileNotFoundError."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"pretrained directory {directory!r} does not exist.")
  paths = {name: _find(directory, name) for name in (UNET_CONFIG, SCHEDULER_CONFIG, WEIGHTS_SAFETENSORS, WEIGHTS_BIN)}
  for name in (UNET_CONFIG, SCHEDULER_CONFIG):
    if paths[name] is None:
      raise FileNotFoundError(f"{directory} has no {name} (nor unet/{name} or scheduler/{name}).")
  if paths[WEIGHTS_SAFETENSORS] is None and paths[WEIGHTS_BIN] is None:
    raise FileNotFoundError(f"{directory} has neither {WEIGHTS_SAFETENSORS} nor {WEIGHTS_BIN}.")
  return paths


def read_layout(directory: str) -> tuple[UNet, tuple[int, int, int]]:
  """The UNet of a diffusers-format directory's config.json and the (H, W, C) it takes, without its weights."""
  path = _files(directory)[UNET_CONFIG]
  return unet_from_config(_read_json(path), path)


def load(directory: str) -> Pretrained:
  """A diffusers-format DDPM directory (or a pipeline's, with `unet/` and `scheduler/`) in our terms.

  Args:
    directory: holds config.json, scheduler_config.json and the weights (safetensors preferred, else .bin).

  Returns:
    The `Pretrained` checkpoint.

  Raises:
    FileNotFoundError: a file is missing.
    ValueError: an unsupported layout or schedule, or a missing, unknown or mis-shaped tensor (named).
  """
  paths = _files(directory)
  model, shape = unet_from_config(_read_json(paths[UNET_CONFIG]), paths[UNET_CONFIG])
  keys = diffusion_from_scheduler(_read_json(paths[SCHEDULER_CONFIG]), paths[SCHEDULER_CONFIG])
  weights = paths[WEIGHTS_SAFETENSORS] or paths[WEIGHTS_BIN]
  state_dict = read_safetensors(weights) if weights.endswith(".safetensors") else read_torch_bin(weights)
  return Pretrained(model, shape, params_from_state_dict(state_dict, model, shape), keys)


def save(directory: str, params: dict[str, Any], model: UNet, image_shape: tuple[int, int, int],
         config: dict[str, Any], betas: np.ndarray, dtype: np.dtype = np.float32) -> None:
  """Writes a diffusers-format directory: config.json, scheduler_config.json, diffusion_pytorch_model.safetensors.

  Args:
    directory: created if needed; existing files of these names are replaced.
    params: our UNet's `params` collection.
    model: the UNet.
    image_shape: (H, W, C) of its inputs.
    config: our dotted config keys, as `diffusion_from_scheduler` returns them.
    betas: the float64 betas of the schedule, shape (T,).
    dtype: of the stored weights (float32, float16 or bfloat16).
  """
  state_dict = state_dict_from_params(params, model, image_shape, dtype)
  os.makedirs(directory, exist_ok=True)
  write_safetensors(os.path.join(directory, WEIGHTS_SAFETENSORS), state_dict, {"format": "pt"})
  for name, content in [(UNET_CONFIG, config_from_unet(model, image_shape)),
                        (SCHEDULER_CONFIG, scheduler_from_diffusion(config, betas))]:
    with open(os.path.join(directory, name), "w") as f:
      json.dump(content, f, indent=2)

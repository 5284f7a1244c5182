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
from typing import Any

import numpy as np

from diffusion_jax import files
from diffusion_jax.models.unet import UNet
from diffusion_jax.pretrained.configs import (
    SCHEDULER_CONFIG,
    UNET_CONFIG,
    WEIGHTS_BIN,
    WEIGHTS_SAFETENSORS,
    betas,
    config_from_unet,
    diffusion_from_scheduler,
    scheduler_from_diffusion,
    unet_from_config,
)
from diffusion_jax.pretrained.names import params_from_state_dict, state_dict_from_params
from diffusion_jax.pretrained.tensors import read_safetensors, read_torch_bin, write_safetensors

__all__ = [
    "SCHEDULER_CONFIG", "UNET_CONFIG", "WEIGHTS_BIN", "WEIGHTS_SAFETENSORS", "Pretrained", "betas",
    "config_from_unet", "diffusion_from_scheduler", "load", "params_from_state_dict", "read_layout",
    "read_safetensors", "read_torch_bin", "save", "scheduler_from_diffusion", "state_dict_from_params",
    "unet_from_config", "write_safetensors",
]


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
    files.write_json(os.path.join(directory, name), content)

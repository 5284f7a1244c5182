"""The checks and translations of a diffusers directory's two config files: `config.json` to our `UNet` (every
layout it does not compute refused by key) and `scheduler_config.json` to our dotted diffusion keys, and back.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffusion_jax import schedules
from diffusion_jax.models.unet import UNet

WEIGHTS_SAFETENSORS = "diffusion_pytorch_model.safetensors"
WEIGHTS_BIN = "diffusion_pytorch_model.bin"
UNET_CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
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


def _refuse(file: str, key: str, value: Any, allowed: str) -> ValueError:
  return ValueError(f"{file}: {key} = {value!r} is a layout our UNet does not compute; supported: {allowed}.")


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
  """The float64 betas of our dotted config keys (`diffusion_from_scheduler`), shape (T,): rescaled to zero terminal
  SNR where `diffusion.rescale_zero_terminal_snr` says so."""
  kwargs = {k.rsplit(".", 1)[1]: v for k, v in keys.items() if k.startswith("diffusion.beta_kwargs.")}
  out = schedules.get_beta_schedule(keys["diffusion.beta_schedule"],
                                    num_diffusion_steps=keys["diffusion.num_diffusion_steps"], **kwargs)
  return schedules.rescale_zero_terminal_snr(out) if keys.get("diffusion.rescale_zero_terminal_snr") else out


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
  for key, value, allowed in [("thresholding", False, "false"), ("clip_sample_range", 1.0, "1.0")]:
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
  keys["diffusion.rescale_zero_terminal_snr"] = bool(cfg.get("rescale_betas_zero_snr", False))
  return keys


def scheduler_from_diffusion(keys: dict[str, Any], betas: np.ndarray) -> dict[str, Any]:
  """diffusers' `DDPMScheduler` scheduler_config.json of our config keys (`diffusion_from_scheduler`'s inverse).

  Args:
    keys: our dotted config keys, as `diffusion_from_scheduler` returns them.
    betas: the float64 betas they make, shape (T,); they go as `trained_betas` when diffusers has no
      name for the schedule (sigmoid, constant, custom, a cosine with other arguments) or when they are rescaled
      to zero terminal SNR (diffusers' rescaling of them again changes nothing: it keeps a zero last value).
  """
  name = keys["diffusion.beta_schedule"]
  cfg = {"_class_name": "DDPMScheduler", "num_train_timesteps": len(betas),
         "variance_type": keys["diffusion.model_var_type"],  # ours are named as diffusers' are
         "prediction_type": _invert(_PREDICTIONS)[keys["diffusion.model_mean_type"]],
         "clip_sample": bool(keys["sampling.clip_denoised"]), "clip_sample_range": 1.0,
         "beta_schedule": "linear", "trained_betas": None,
         "rescale_betas_zero_snr": bool(keys.get("diffusion.rescale_zero_terminal_snr", False))}
  default_cosine = all(keys.get(f"diffusion.beta_kwargs.{k}") in (None, v) for k, v in [("s", 0.008),
                                                                                          ("max_beta", 0.999)])
  if cfg["rescale_betas_zero_snr"]:
    cfg["trained_betas"] = [float(b) for b in betas]
  elif name in ("linear", "quadratic"):  # both are fixed by their end points
    cfg.update(beta_schedule=_invert(_BETA_SCHEDULES)[name], beta_start=float(betas[0]), beta_end=float(betas[-1]))
  elif name == "cosine" and default_cosine:
    cfg["beta_schedule"] = "squaredcos_cap_v2"
  else:
    cfg["trained_betas"] = [float(b) for b in betas]
  return cfg

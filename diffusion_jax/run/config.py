"""Validating an experiment config: every key checked, before anything is built or compiled.

The keys, their defaults and their meaning are in `configs/default.py`. Each
check raises `ValueError` naming the key, the bad value and what is allowed.
`unknown_key_message` turns a mistyped `--config.KEY` into one paragraph that
names the closest valid keys.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from diffusion_jax import diffusion, editing, guidance, karras, losses, schedules, solvers
from diffusion_jax.checks import is_int
from diffusion_jax.run import data
from diffusion_jax.run.checkpoint import ON_CORRUPT

MODELS = ("unet", "mlp")
SAMPLERS = ("ancestral", "ddim", *solvers.SOLVERS, *karras.SAMPLERS)
EDIT_TASKS = ("inpaint", "sdedit", "invert")
EDIT_MASKS = ("left_half", "right_half", "top_half", "bottom_half", "center")
COMPUTE_DTYPES = ("float32", "bfloat16")
ON_NONFINITE = ("error", "skip")
QUALITY_METRICS = ("auto", "inception", "classifier", "energy")
TIMESTEP_SAMPLERS = ("uniform", "importance")
LR_DECAYS = ("constant", "cosine")


# Keys added after workdirs were first written, with the values that reproduce a run from before them:
# `fill_added_keys` puts them into an older workdir's config.json.
ADDED_KEYS = {
    "pretrained": None,
    "model.class_conditional": False,
    "training.label_dropout": 0.1,
    "sampling.guidance_scale": 1.0,
    "sampling.labels": "all",
    "sampling.spacing": "linspace",
    "sampling.order": 2,
    "eval.guidance_scales": None,
    "data.num_workers": 0,
    "data.image_dir": None,
    "data.path": None,
    "data.image_size": None,
    "data.channels": 3,
    "data.eval_fraction": 0.05,
    "diffusion.rescale_zero_terminal_snr": False,
    "training.loss_weighting": "uniform",
    "training.min_snr_gamma": 5.0,
    "training.p2_k": 1.0,
    "training.p2_gamma": 1.0,
    "training.timestep_sampler": "uniform",
    "eval.quality_bootstrap": 0,
    "training.lr_decay": "constant",
    "sampling.churn": 0.0,
    "sampling.churn_sigma_min": 0.0,
    "sampling.churn_sigma_max": None,
    "sampling.churn_noise": 1.0,
    "sampling.guidance_rescale": 0.0,
    "sampling.guidance_interval": None,
    "edit.task": "inpaint",
    "edit.input": None,
    "edit.mask": "center",
    "edit.start": None,
    "edit.jump_length": 10,
    "edit.resample": 10,
    "training.on_corrupt_checkpoint": "fallback",
}


def fill_added_keys(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with each key of `ADDED_KEYS` it lacks set to the value of the runs from before that key."""
  have = set(flat_keys(config))
  for key, value in ADDED_KEYS.items():
    if key not in have:
      set_key(config, key, value)
  return config


def get(config: ml_collections.ConfigDict, key: str) -> Any:
  """`config` at a dotted `key` such as `training.num_train_steps`."""
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def set_key(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """Sets `config` at a dotted `key` to `value`, making any section it lacks."""
  node = config
  *sections, name = key.split(".")
  for part in sections:
    if part not in node:
      node[part] = ml_collections.ConfigDict()
    node = node[part]
  node[name] = value


def _require(config: ml_collections.ConfigDict, key: str, ok: Callable[[Any], bool], allowed: str) -> Any:
  value = get(config, key)
  if not ok(value):
    raise ValueError(f"{key} = {value!r} is invalid; allowed: {allowed}.")
  return value


def _is_number(v: Any) -> bool:
  return (is_int(v) or isinstance(v, float)) and math.isfinite(v)


def beta_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The schedule arguments set in `config.diffusion.beta_kwargs` (None means the schedule's default)."""
  return {k: v for k, v in config.diffusion.beta_kwargs.items() if v is not None}


def make_betas(config: ml_collections.ConfigDict) -> np.ndarray:
  """float64 betas of `config.diffusion`, shape `(T,)`, rescaled to zero terminal SNR where it says so; `ValueError`
  for a bad schedule or argument."""
  betas = schedules.get_beta_schedule(config.diffusion.beta_schedule,
                                      num_diffusion_steps=config.diffusion.num_diffusion_steps, **beta_kwargs(config))
  return schedules.rescale_zero_terminal_snr(betas) if config.diffusion.rescale_zero_terminal_snr else betas


def validate_config(config: ml_collections.ConfigDict) -> np.ndarray:
  """Raises `ValueError` for any bad key of `config`, before anything is built or compiled.

  Returns:
    The float64 betas of `config.diffusion`, shape `(T,)`: checking the schedule computes them, once.
  """
  pos_int = lambda v: is_int(v) and v >= 1
  for key in ["training.num_train_steps", "training.global_batch_size", "training.checkpoint_every_steps",
              "training.log_every_steps", "training.sample_every_steps", "training.steps_per_call",
              "training.max_checkpoints_to_keep", "diffusion.num_diffusion_steps", "sampling.num_samples",
              "sampling.preview_samples", "sampling.batch_size", "eval.batch_size", "eval.timesteps_per_call",
              "eval.kid_subsets", "eval.kid_subset_size"]:
    _require(config, key, pos_int, "a positive integer")
  for key in ["training.warmup_steps", "eval.num_examples", "eval.quality_samples", "eval.quality_every_steps",
              "data.num_workers"]:
    _require(config, key, lambda v: is_int(v) and v >= 0, "a non-negative integer")
  for key in ["seed", "sampling.seed"]:
    _require(config, key, is_int, "an integer")
  k = config.training.steps_per_call
  for key in ["training.num_train_steps", "training.checkpoint_every_steps", "training.log_every_steps",
              "training.sample_every_steps", "eval.quality_every_steps"]:
    _require(config, key, lambda v: v % k == 0, f"a multiple of training.steps_per_call = {k}")
  _require(config, "training.learning_rate", lambda v: _is_number(v) and v > 0, "a positive number")
  _require(config, "training.lr_decay", lambda v: v in LR_DECAYS, ", ".join(LR_DECAYS))
  if config.training.warmup_steps >= config.training.num_train_steps and config.training.lr_decay != "constant":
    raise ValueError(f"training.lr_decay = {config.training.lr_decay!r} decays after training.warmup_steps = "
                     f"{config.training.warmup_steps}, which leaves nothing of training.num_train_steps = "
                     f"{config.training.num_train_steps}; warm up for fewer steps.")
  _require(config, "training.grad_clip_norm", lambda v: _is_number(v) and v >= 0,
           "a non-negative number (0 disables clipping)")
  for key in ["training.ema_decay", "training.adam_b1", "training.adam_b2"]:
    _require(config, key, lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")
  _require(config, "training.adam_eps", lambda v: _is_number(v) and v >= 0, "a non-negative number")
  _require(config, "training.compute_dtype", lambda v: v in COMPUTE_DTYPES, ", ".join(COMPUTE_DTYPES))
  _require(config, "training.on_nonfinite", lambda v: v in ON_NONFINITE, ", ".join(ON_NONFINITE))
  _require(config, "training.on_corrupt_checkpoint", lambda v: v in ON_CORRUPT, ", ".join(ON_CORRUPT))
  T = config.diffusion.num_diffusion_steps
  weights_ok = lambda v: isinstance(v, (tuple, list)) and len(v) == T and all(_is_number(w) and w >= 0 for w in v)
  _require(config, "training.timestep_weights", lambda v: v is None or weights_ok(v),
           f"None (uniform) or {T} non-negative numbers, one per diffusion step")
  _require(config, "training.loss_weighting", lambda v: v in losses.LOSS_WEIGHTINGS, ", ".join(losses.LOSS_WEIGHTINGS))
  _require(config, "training.min_snr_gamma", lambda v: _is_number(v) and v > 0, "a number > 0")
  _require(config, "training.p2_k", lambda v: _is_number(v) and v > 0, "a number > 0")
  _require(config, "training.p2_gamma", lambda v: _is_number(v) and v >= 0, "a number >= 0")
  _require(config, "training.timestep_sampler", lambda v: v in TIMESTEP_SAMPLERS, ", ".join(TIMESTEP_SAMPLERS))
  if config.training.loss_weighting != "uniform" and config.training.timestep_weights is not None:
    raise ValueError(f"training.loss_weighting = {config.training.loss_weighting!r} and training.timestep_weights "
                     "both weight the MSE per t; set one of them (loss_weighting = 'uniform' to give the weights).")
  _require(config, "model.name", lambda v: v in MODELS, ", ".join(MODELS))
  _require(config, "eval.quality_metric", lambda v: v in QUALITY_METRICS, ", ".join(QUALITY_METRICS))
  _require(config, "eval.quality_bootstrap", lambda v: is_int(v) and (v == 0 or v >= 2),
           "0 (no spread) or an integer >= 2 (resamples)")
  if config.eval.quality_every_steps and not config.eval.quality_samples:
    raise ValueError(f"eval.quality_every_steps = {config.eval.quality_every_steps} needs eval.quality_samples > 0.")
  _require(config, "sampling.sampler", lambda v: v in SAMPLERS, ", ".join(SAMPLERS))
  _require(config, "sampling.num_steps", lambda v: v is None or (pos_int(v) and v <= T),
           f"None (all steps) or an integer in [1, diffusion.num_diffusion_steps = {T}]")
  _require(config, "sampling.eta", lambda v: _is_number(v) and v >= 0, "a number >= 0")
  _require(config, "sampling.spacing", lambda v: v is None or v in schedules.SPACINGS,
           "None (the sampler's best) or " + ", ".join(schedules.SPACINGS))
  _require(config, "sampling.order", lambda v: is_int(v) and 1 <= v <= 3, "1, 2 or 3")
  if T % config.eval.timesteps_per_call:
    raise ValueError(f"eval.timesteps_per_call = {config.eval.timesteps_per_call} is invalid; allowed: a divisor "
                     f"of diffusion.num_diffusion_steps = {T}.")
  diffusion.check_model_types(config.diffusion.model_mean_type, config.diffusion.model_var_type)
  if config.sampling.sampler != "ancestral" and config.diffusion.model_var_type == "learned_range":
    raise ValueError(f"sampling.sampler = {config.sampling.sampler!r} does not use learned variances; use "
                     "'ancestral' with diffusion.model_var_type = 'learned_range'.")
  _check_karras(config)
  _check_conditioning(config)
  _check_zero_terminal_snr(config)
  _check_edit(config)
  data.check_dataset_name(config.data.dataset)
  _check_own_images(config)
  if config.data.dataset in data.TOY_DATASETS and config.model.name != "mlp":
    raise ValueError(f"data.dataset = {config.data.dataset!r} is 2-D points; it needs model.name = 'mlp'.")
  if config.data.dataset in data.IMAGE_DATASETS and config.model.name != "unet":
    raise ValueError(f"data.dataset = {config.data.dataset!r} is images; it needs model.name = 'unet'.")
  if config.pretrained is not None:
    if config.model.name != "unet":
      raise ValueError(f"pretrained = {config.pretrained!r} holds a UNet; it needs model.name = 'unet', "
                       f"not {config.model.name!r}.")
    if not os.path.isdir(config.pretrained):
      raise FileNotFoundError(f"pretrained = {config.pretrained!r}: no such directory.")
  return make_betas(config)


def _check_zero_terminal_snr(config: ml_collections.ConfigDict) -> None:
  """What `diffusion.rescale_zero_terminal_snr` leaves undefined is refused: eps-prediction at t = T, and samplers
  or spacings that step in log-SNR (-inf at t = T) or never start there."""
  _require(config, "diffusion.rescale_zero_terminal_snr", lambda v: isinstance(v, bool), "True or False")
  if not config.diffusion.rescale_zero_terminal_snr:
    return
  key = "diffusion.rescale_zero_terminal_snr = True"
  if config.diffusion.model_mean_type == "eps":
    raise ValueError(f"{key} leaves no signal at t = T, where an eps-predicting network cannot give x_0 (it divides "
                     "by sqrt(alpha_bar_T) = 0); set diffusion.model_mean_type = 'v' (Lin et al. 2024) or 'xstart'.")
  if config.sampling.sampler in (*solvers.SOLVERS, *karras.SAMPLERS):
    raise ValueError(f"sampling.sampler = {config.sampling.sampler!r} steps in log-SNR or sigma, which are infinite at "
                     f"t = T under {key}; use 'ancestral' or 'ddim'.")
  if config.sampling.num_steps is not None and config.sampling.spacing in ("leading", "logsnr", "karras"):
    raise ValueError(f"sampling.spacing = {config.sampling.spacing!r} does not start at t = T (leading) or is "
                     f"undefined there (logsnr, karras) under {key}; use 'trailing' (Lin et al. 2024) or 'linspace'.")


def _check_karras(config: ml_collections.ConfigDict) -> None:
  """The churn of `heun` and `euler` (EDM's S_churn, S_tmin, S_tmax, S_noise)."""
  sc = config.sampling
  _require(config, "sampling.churn", lambda v: _is_number(v) and v >= 0, "a number >= 0 (0: deterministic)")
  _require(config, "sampling.churn_sigma_min", lambda v: _is_number(v) and v >= 0, "a number >= 0")
  _require(config, "sampling.churn_sigma_max", lambda v: v is None or (_is_number(v) and v >= sc.churn_sigma_min),
           f"None (no bound) or a number >= sampling.churn_sigma_min = {sc.churn_sigma_min}")
  _require(config, "sampling.churn_noise", lambda v: _is_number(v) and v > 0, "a number > 0")
  if sc.churn and sc.sampler not in karras.SAMPLERS:
    raise ValueError(f"sampling.churn = {sc.churn!r} is read by heun and euler only, not {sc.sampler!r}.")


def _check_edit(config: ml_collections.ConfigDict) -> None:
  """The keys of `--mode edit` (the inputs' shape is checked against the model when the mode reads them)."""
  is_file = lambda v, ext: isinstance(v, str) and v.endswith(ext) and os.path.isfile(v)
  _require(config, "edit.task", lambda v: v in EDIT_TASKS, ", ".join(EDIT_TASKS))
  _require(config, "edit.input", lambda v: v is None or is_file(v, (".png", ".npz")),
           "None (the eval split's images) or an existing .png or .npz file")
  _require(config, "edit.mask", lambda v: v in EDIT_MASKS or is_file(v, (".png", ".npz")),
           ", ".join(EDIT_MASKS) + ", or an existing .png or .npz file (white, non-zero: filled in)")
  if config.edit.start is not None:
    try:
      editing.check_start(config.edit.start, config.diffusion.num_diffusion_steps)
    except ValueError as e:
      raise ValueError(f"edit.{e}") from None
  for key in ("edit.jump_length", "edit.resample"):
    _require(config, key, lambda v: is_int(v) and v >= 1, "a positive integer")


def _check_own_images(config: ml_collections.ConfigDict) -> None:
  """The keys of `data.dataset = 'folder'` and `'arrays'`, and that no other dataset is given them."""
  dc = config.data
  own = {"folder": "data.image_dir", "arrays": "data.path"}
  for dataset, key in own.items():
    value = get(config, key)
    if dc.dataset == dataset and not (isinstance(value, str) and value):
      raise ValueError(f"data.dataset = {dataset!r} needs {key} (it is {value!r}).")
    if dc.dataset != dataset and value is not None:
      raise ValueError(f"{key} = {value!r} is only read with data.dataset = {dataset!r}, not {dc.dataset!r}.")
  if dc.dataset == "folder" and dc.image_size is None:
    raise ValueError("data.dataset = 'folder' needs data.image_size, the side of the square images (e.g. 32).")
  if dc.dataset not in own and dc.image_size is not None:
    raise ValueError(f"data.image_size = {dc.image_size!r} is only read with data.dataset = 'folder' or 'arrays'.")
  _require(config, "data.image_size", lambda v: v is None or (is_int(v) and v >= 1), "None or a positive integer")
  _require(config, "data.channels", lambda v: v in (1, 3), "1 (grey) or 3 (RGB)")
  _require(config, "data.eval_fraction", lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")


def parse_labels(value: str) -> tuple[int, ...] | None:
  """`sampling.labels`: None for "all", else the comma-separated labels; `ValueError` for anything else."""
  if value == "all":
    return None
  try:
    labels = tuple(int(v) for v in str(value).split(","))
  except ValueError:
    labels = ()
  if not labels or min(labels) < 0:
    raise ValueError(f"sampling.labels = {value!r} is invalid; allowed: 'all' or comma-separated class labels "
                     "(integers >= 0) such as '3,7'.")
  return labels


def _check_conditioning(config: ml_collections.ConfigDict) -> None:
  """The keys of class conditioning and guidance (the labels' range is checked against the data in `build`)."""
  _require(config, "model.class_conditional", lambda v: isinstance(v, bool), "True or False")
  _require(config, "training.label_dropout", lambda v: _is_number(v) and 0 <= v < 1, "a probability in [0, 1)")
  try:
    guidance.check_guidance_scale(config.sampling.guidance_scale)
    guidance.check_guidance_rescale(config.sampling.guidance_rescale)
    guidance.check_guidance_interval(config.sampling.guidance_interval, config.diffusion.num_diffusion_steps)
  except ValueError as e:
    raise ValueError(f"sampling.{e}") from None
  _require(config, "eval.guidance_scales", lambda v: v is None or (isinstance(v, (tuple, list)) and len(v) > 0 and all(
      _is_number(w) and w >= 0 for w in v)), "None or a non-empty tuple of guidance scales w >= 0")
  parse_labels(config.sampling.labels)
  if config.model.class_conditional and config.model.name != "unet":
    raise ValueError(f"model.class_conditional = True needs model.name = 'unet' (the MLP takes no labels), "
                     f"not {config.model.name!r}.")
  if not config.model.class_conditional:
    for key, unset in [("sampling.labels", "all"), ("sampling.guidance_scale", 1.0), ("eval.guidance_scales", None),
                       ("sampling.guidance_rescale", 0.0), ("sampling.guidance_interval", None)]:
      if get(config, key) != unset:
        raise ValueError(f"{key} = {get(config, key)!r} needs a class-conditional model: set "
                         "model.class_conditional = True (on a dataset with labels).")


def check_workdir_writable(workdir: str) -> None:
  """Raises `ValueError` unless `workdir` exists as a writable directory or can be created."""
  path = os.path.abspath(workdir)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
    raise ValueError(f"--workdir {workdir!r} is not writable ({path!r} is not a writable directory).")


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every leaf key of `config`, dotted (`training.num_train_steps`), in definition order."""
  keys = []
  for name, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      keys += flat_keys(value, f"{prefix}{name}.")
    else:
      keys.append(f"{prefix}{name}")
  return keys


def leaf_of(key: str) -> str:
  """`num_train_steps` of `training.num_train_steps`."""
  return key.rsplit(".", 1)[-1]


def unknown_key_message(config: ml_collections.ConfigDict, key: str) -> str:
  """One paragraph for a `--config.KEY` that `config` does not have: the key and the closest valid keys.

  Args:
    config: the config as loaded from its file.
    key: the dotted key given on the command line.

  Returns:
    The message (no trailing newline).
  """
  keys = flat_keys(config)
  strong = difflib.get_close_matches(key, keys, n=3, cutoff=0.8)
  strong += [k for k in keys if leaf_of(k) == leaf_of(key) and k not in strong]
  close = strong + [k for k in difflib.get_close_matches(key, keys, n=3, cutoff=0.6) if k not in strong]
  section = key.rsplit(".", 1)[0] if "." in key else ""
  in_section = [k for k in keys if section and k.startswith(section + ".")]
  message = f"--config.{key}: {key!r} is not a config key."
  if strong:
    message += f" Did you mean \"{leaf_of(strong[0])}\" ({strong[0]})?"
    if len(close) > 1:
      message += f" Other close keys: {', '.join(close[1:3])}."
  elif in_section:
    message += f" The keys of {section!r} are: {', '.join(in_section)}."
  elif close:
    message += f" The closest valid keys: {', '.join(close)}."
  else:
    message += f" The sections are: {', '.join(sorted({k.split('.')[0] for k in keys}))}."
  return message + " Every key, with its meaning, is in configs/default.py."

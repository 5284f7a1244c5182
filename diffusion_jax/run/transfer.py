"""A diffusers-format checkpoint in and out of an experiment: its layout and schedule checked against the
config (every difference named), its parameters placed on the mesh, a run's parameters exported.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from diffusion_jax import pretrained
from diffusion_jax.models.unet import UNet
from diffusion_jax.run import config as config_lib
from diffusion_jax.run import data, parallel
from diffusion_jax.run.experiment import Experiment


def pretrained_info(config: ml_collections.ConfigDict) -> data.DatasetInfo:
  """The images (and classes) `config.pretrained` takes, described without reading `config.data.dataset`."""
  model, shape = pretrained.read_layout(config.pretrained)
  return data.DatasetInfo(config.data.dataset, shape, model.num_classes, True)


def _mismatches(exp: Experiment, loaded: pretrained.Pretrained) -> list[str]:
  """What differs between the experiment and a pretrained checkpoint, each as `key: ours vs theirs`.

  The fixed variances (beta_t or beta-tilde_t) are a sampling choice, free whatever the scheduler file says;
  a learned one is part of the network.
  """
  out = []
  if tuple(exp.info.shape) != loaded.image_shape:
    out.append(f"data.dataset {exp.config.data.dataset!r} has images of shape {tuple(exp.info.shape)}, the "
               f"checkpoint takes {loaded.image_shape}")
  for name in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "num_groups"):
    ours, theirs = getattr(exp.model, name), getattr(loaded.model, name)
    if tuple(np.atleast_1d(ours)) != tuple(np.atleast_1d(theirs)):
      out.append(f"model.{name} = {ours!r}, the checkpoint's is {theirs!r}")
  if exp.model.num_classes != loaded.model.num_classes:
    out.append(f"the model has num_classes = {exp.model.num_classes}, the checkpoint {loaded.model.num_classes}")
  dc = exp.config.diffusion
  learned = "learned_range" in (dc.model_var_type, loaded.config["diffusion.model_var_type"])
  for key in ("num_diffusion_steps", "model_mean_type", "rescale_zero_terminal_snr") + (
      ("model_var_type",) if learned else ()):
    if dc[key] != loaded.config[f"diffusion.{key}"]:
      out.append(f"diffusion.{key} = {dc[key]!r}, the checkpoint's is {loaded.config[f'diffusion.{key}']!r}")
  theirs = pretrained.betas(loaded.config)
  if not out and not np.allclose(exp.betas, theirs, rtol=1e-6, atol=0):
    out.append(f"diffusion.beta_schedule {dc.beta_schedule!r} with beta_kwargs {config_lib.beta_kwargs(exp.config)} "
               f"gives betas {exp.betas[0]:.6g}..{exp.betas[-1]:.6g}; the checkpoint's are "
               f"{loaded.config['diffusion.beta_schedule']!r}, {theirs[0]:.6g}..{theirs[-1]:.6g}")
  return out


def load_pretrained(exp: Experiment) -> Any:
  """The parameters of the diffusers-format directory `config.pretrained`, placed on the mesh (replicated).

  Raises:
    FileNotFoundError / ValueError: a missing file, an unsupported layout or tensor (see
      `pretrained.load`), or a checkpoint whose layout or schedule is not the config's (each difference named).
  """
  loaded = pretrained.load(exp.config.pretrained)
  check_pretrained(exp, loaded)
  return jax.device_put(loaded.params, parallel.replicated(exp.mesh))


def check_pretrained(exp: Experiment, loaded: pretrained.Pretrained) -> None:
  """Raises `ValueError` naming every difference of layout, image shape or schedule between the two."""
  problems = _mismatches(exp, loaded)
  if problems:
    raise ValueError(f"pretrained = {exp.config.pretrained!r} does not match the config: {'; '.join(problems)}. "
                     "Set those keys to the checkpoint's (configs/ddpm_*.py are made for the published models).")


def export_pretrained(exp: Experiment, params: Any, directory: str) -> None:
  """Writes `params` of the experiment's UNet as a diffusers-format directory (see `pretrained.save`).

  Raises:
    ValueError: the model is not a UNet (diffusers has no such 2-D point denoiser).
  """
  if not isinstance(exp.model, UNet):
    raise ValueError(f"model.name = {exp.config.model.name!r} cannot be exported: diffusers' UNet2DModel is a UNet.")
  keys = {f"diffusion.{k}": exp.config.diffusion[k] for k in
          ("num_diffusion_steps", "beta_schedule", "model_mean_type", "model_var_type", "rescale_zero_terminal_snr")}
  keys.update({f"diffusion.beta_kwargs.{k}": v for k, v in config_lib.beta_kwargs(exp.config).items()})
  keys["sampling.clip_denoised"] = exp.config.sampling.clip_denoised
  pretrained.save(directory, jax.device_get(params), exp.model, tuple(exp.info.shape), keys, exp.betas)

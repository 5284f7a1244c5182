"""A trained workdir: the files `load` reads back (`config.json`, `dataset_info.json`) and `load` itself.

For research code, `load(workdir)` returns a trained run (model, parameters,
EMA parameters, schedule) and `Run.sample` draws from it:

    run = load("workdirs/digits")
    samples = run.sample(16, jax.random.key(0))  # (16, 8, 8, 1) in [-1, 1]
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from diffusion_jax import diffusion, files, schedules
from diffusion_jax.run import config as config_lib
from diffusion_jax.run import data
from diffusion_jax.run.experiment import Experiment, TrainState, build, model_fn, restore_latest, sampling_params
from diffusion_jax.run.sampler import Sampler


def write_run_files(exp: Experiment, workdir: str) -> None:
  """`config.json` (the full config) and `dataset_info.json` (what the model needs of the data): what `load` reads."""
  with files.atomic_open(os.path.join(workdir, "config.json")) as f:
    f.write(exp.config.to_json_best_effort(indent=2))
  files.write_json(os.path.join(workdir, "dataset_info.json"), dataclasses.asdict(exp.info))


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained workdir in memory: the experiment, its latest checkpoint's state and step."""

  experiment: Experiment
  state: TrainState
  step: int

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.experiment.config

  @property
  def model(self) -> nn.Module:
    return self.experiment.model

  @property
  def schedule(self) -> schedules.DiffusionSchedule:
    return self.experiment.schedule

  @property
  def params(self) -> Any:
    """The parameters sampling uses: `sampling_params(state, config)`."""
    return sampling_params(self.state, self.config)

  def model_fn(self) -> diffusion.ModelFn:
    """`(x_t, t) -> network output` with `params`, for the library's diffusion functions."""
    return model_fn(self.model, self.params)

  def sample(self, num_samples: int, key: jax.Array, *, batch_size: int | None = None) -> np.ndarray:
    """Samples per `config.sampling` (sampler, steps) with `params`, as `--mode sample` draws them.

    Args:
      num_samples: how many.
      key: PRNG key; `--mode sample` uses `jax.random.key(config.sampling.seed)`.
      batch_size: samples per compiled call; `config.sampling.batch_size` when None.

    Returns:
      float32 numpy of shape `(num_samples, *shape)`: images in [-1, 1], or points.
    """
    return Sampler(self.experiment, batch_size or self.config.sampling.batch_size)(self.params, num_samples, key)


def load(workdir: str, **overrides: Any) -> Run:
  """The latest checkpoint of a trained `workdir`, with the config it was trained with.

  Args:
    workdir: a `main.py --workdir` that holds `config.json`, `dataset_info.json` and `checkpoints/`.
    **overrides: dotted config keys to change first, e.g. `**{"sampling.num_steps": 100}`.

  Returns:
    The `Run`.

  Raises:
    FileNotFoundError: `workdir` holds no trained run.
    ValueError: a bad override.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: {workdir!r} is not a workdir of main.py --mode train.")
  with open(path) as f:
    config = config_lib.fill_added_keys(ml_collections.ConfigDict(json.load(f)))
  for key, value in overrides.items():
    if key not in config_lib.flat_keys(config):
      raise ValueError(config_lib.unknown_key_message(config, key))
    config_lib.set_key(config, key, value)
  info_path = os.path.join(workdir, "dataset_info.json")
  info = None
  if os.path.exists(info_path):
    with open(info_path) as f:
      fields = json.load(f)
    names = fields.get("class_names")
    info = data.DatasetInfo(**{**fields, "shape": tuple(fields["shape"]),
                               "class_names": None if names is None else tuple(names)})
  exp = build(config, info=info)
  state, step = restore_latest(exp, workdir)
  return Run(exp, state, step)

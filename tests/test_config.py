"""Config validation, the reach of the config (every knob of the library), and unknown-key messages."""

import argparse
import importlib
import os
import pathlib
import sys

import numpy as np
import pytest

import helpers
from configs import default, tiny
from diffusion_jax import schedules
from diffusion_jax.run import config as config_lib
from diffusion_jax.run import data, experiment
from helpers import tiny_config

sys.path.insert(0, os.path.join(helpers.ROOT, "benchmarks"))
import objectives  # noqa: E402  (benchmarks/objectives.py)


def test_every_schedule_argument_is_a_config_key():
  arguments = {a for args in schedules.SCHEDULE_KWARGS.values() for a in args}
  assert set(default.get_config().diffusion.beta_kwargs) == arguments


@pytest.mark.parametrize("name, kwargs", [
    ("cosine", {"s": 0.02, "max_beta": 0.5}),
    ("constant", {"beta": 0.01}),
    ("sigmoid", {"beta_start": 1e-3, "beta_end": 0.05}),
    ("custom", {"betas": tuple(np.linspace(0.01, 0.2, 50))}),
])
def test_schedule_arguments_from_the_config_reach_the_betas(name, kwargs):
  c = tiny.get_config()
  c.diffusion.beta_schedule = name
  for k, v in kwargs.items():
    c.diffusion.beta_kwargs[k] = v
  config_lib.validate_config(c)
  want = schedules.get_beta_schedule(name, num_diffusion_steps=50, **kwargs)
  np.testing.assert_array_equal(config_lib.make_betas(c), want)
  if name != "custom":
    assert not np.array_equal(want, schedules.get_beta_schedule(name, num_diffusion_steps=50))


def test_loss_weighting_and_timestep_weights_are_not_both_set():
  c = tiny.get_config()
  c.training.update(loss_weighting="min_snr", timestep_weights=(1.0,) * 50)
  with pytest.raises(ValueError, match=r"training.loss_weighting = 'min_snr' and training.timestep_weights both"):
    config_lib.validate_config(c)


@pytest.mark.parametrize("keys, match", [
    ({"dataset": "folder"}, r"data.dataset = 'folder' needs data.image_dir \(it is None\)"),
    ({"dataset": "folder", "image_dir": "x"}, r"data.dataset = 'folder' needs data.image_size"),
    ({"dataset": "arrays"}, r"data.dataset = 'arrays' needs data.path"),
    ({"image_dir": "x"}, r"data.image_dir = 'x' is only read with data.dataset = 'folder', not 'digits'"),
    ({"dataset": "folder", "image_dir": "x", "path": "a.npz", "image_size": 8},
     r"data.path = 'a.npz' is only read with data.dataset = 'arrays', not 'folder'"),
    ({"image_size": 8}, r"data.image_size = 8 is only read with data.dataset = 'folder' or 'arrays'"),
    ({"dataset": "folder", "image_dir": "x", "image_size": 0}, r"data.image_size = 0 is invalid; allowed: None or a"),
    ({"dataset": "arrays", "path": "a.npz", "channels": 2}, r"data.channels = 2 is invalid; allowed: 1 \(grey\)"),
    ({"dataset": "arrays", "path": "a.npz", "eval_fraction": 1.0}, r"data.eval_fraction = 1.0 is invalid; allowed: a"),
])
def test_the_keys_of_your_own_images(keys, match):
  c = tiny.get_config()
  c.data.update(keys)
  with pytest.raises(ValueError, match=match):
    config_lib.validate_config(c)


@pytest.mark.parametrize("keys, match", [
    ({"diffusion.model_mean_type": "eps"},
     r"diffusion.rescale_zero_terminal_snr = True leaves no signal at t = T.* set diffusion.model_mean_type = 'v'"),
    ({"sampling.sampler": "dpm_solver++"}, r"sampling.sampler = 'dpm_solver\+\+' steps in log-SNR or sigma, which"),
    ({"sampling.sampler": "heun"}, r"sampling.sampler = 'heun' steps in log-SNR or sigma, which are infinite"),
    ({"sampling.num_steps": 10, "sampling.spacing": "leading"},
     r"sampling.spacing = 'leading' does not start at t = T .* use 'trailing'"),
])
def test_zero_terminal_snr_refuses_what_it_leaves_undefined(keys, match):
  c = tiny.get_config()
  c.diffusion.update(rescale_zero_terminal_snr=True, model_mean_type="v")
  config_lib.validate_config(c)  # v, ancestral, every step: fine
  c.sampling.update(sampler="ddim", num_steps=10, spacing="trailing")
  betas = config_lib.validate_config(c)
  assert betas[-1] == 1.0 and np.cumprod(1 - betas)[-1] == 0.0
  for key, value in keys.items():
    section, name = key.split(".")
    c[section][name] = value
  with pytest.raises(ValueError, match=match):
    config_lib.validate_config(c)


@pytest.mark.parametrize("key, value, match", [
    ("training.timestep_weights", (1.0,) * 49, r"None \(uniform\) or 50 non-negative numbers"),
    ("training.timestep_weights", (1.0,) * 49 + (-1.0,), r"None \(uniform\) or 50 non-negative numbers"),
    ("training.adam_b1", 1.0, r"training.adam_b1 = 1.0 is invalid; allowed: a number in \[0, 1\)"),
    ("training.adam_eps", float("nan"), r"training.adam_eps = nan is invalid"),
    ("sampling.eta", -0.5, r"sampling.eta = -0.5 is invalid; allowed: a number >= 0"),
    ("eval.timesteps_per_call", 3, r"eval.timesteps_per_call = 3 is invalid; allowed: a divisor"),
    ("eval.num_examples", -1, r"eval.num_examples = -1 is invalid; allowed: a non-negative integer"),
    ("training.loss_weighting", "snr", r"training.loss_weighting = 'snr' is invalid; allowed: uniform, min_snr, p2"),
    ("training.min_snr_gamma", 0.0, r"training.min_snr_gamma = 0.0 is invalid; allowed: a number > 0"),
    ("training.p2_gamma", -1.0, r"training.p2_gamma = -1.0 is invalid; allowed: a number >= 0"),
    ("training.timestep_sampler", "loss", r"training.timestep_sampler = 'loss' is invalid; allowed: uniform, impor"),
    ("eval.quality_bootstrap", 1, r"eval.quality_bootstrap = 1 is invalid; allowed: 0 \(no spread\) or an int"),
])
def test_validate_config_names_the_key_the_value_and_what_is_allowed(key, value, match):
  c = tiny.get_config()
  section, name = key.split(".")
  c[section][name] = value
  with pytest.raises(ValueError, match=match):
    config_lib.validate_config(c)


@pytest.mark.parametrize("key, want", [
    ("training.num_train_step", 'Did you mean "num_train_steps" (training.num_train_steps)?'),
    ("trainng.num_train_steps", 'Did you mean "num_train_steps" (training.num_train_steps)?'),
    ("training.batch_size", 'Did you mean "global_batch_size" (training.global_batch_size)?'),
    ("ema_decay", 'Did you mean "ema_decay" (training.ema_decay)?'),
    ("model.width", "The keys of 'model' are: model.attn_resolutions, model.ch, "),
    ("zzz", "The sections are: data, diffusion, edit, eval, model, pretrained, sampling, seed, training."),
])
def test_unknown_key_message_names_the_closest_keys(key, want):
  message = config_lib.unknown_key_message(default.get_config(), key)
  assert message.startswith(f"--config.{key}: {key!r} is not a config key.")
  assert want in message and "\n" not in message


def test_flat_keys_are_every_leaf():
  keys = config_lib.flat_keys(default.get_config())
  assert "training.num_train_steps" in keys and "diffusion.beta_kwargs.max_beta" in keys
  assert "training" not in keys and len(keys) == len(set(keys))


@pytest.mark.parametrize("overrides,match", [
    ({"sampling.guidance_scale": -1.0}, r"sampling.guidance_scale = -1.0 is invalid; allowed: a number w >= 0"),
    ({"training.label_dropout": 1.0}, r"training.label_dropout = 1.0 is invalid; allowed: a probability in \[0, 1\)"),
    ({"sampling.labels": "3,x"}, r"sampling.labels = '3,x' is invalid; allowed: 'all' or comma-separated"),
    ({"sampling.labels": "3,10"}, r"sampling.labels = '3,10' has labels outside \[0, 10\): data.dataset = 'digits' "
                                  r"has 10 classes"),
    ({"model.class_conditional": False, "sampling.labels": "3"},
     r"sampling.labels = '3' needs a class-conditional model: set model.class_conditional = True"),
    ({"model.class_conditional": False, "sampling.guidance_scale": 2.0}, r"sampling.guidance_scale = 2.0 needs a"),
    ({"eval.guidance_scales": (1.0, -2.0)}, r"eval.guidance_scales = \(1.0, -2.0\) is invalid"),
])
def test_bad_conditioning_is_refused_before_anything_compiles(overrides, match):
  c = tiny_config("/nonexistent")
  for key, value in overrides.items():
    section, name = key.split(".")
    c[section][name] = value
  with pytest.raises(ValueError, match=match):
    experiment.build(c, info=data.DatasetInfo("digits", (8, 8, 1), 10, True))


def test_a_conditional_model_needs_a_dataset_with_labels():
  with pytest.raises(ValueError, match=r"model.class_conditional = True needs labels, and data.dataset = 'digits' "
                                       r"has none"):
    experiment.build(tiny_config("/nonexistent"), info=data.DatasetInfo("digits", (8, 8, 1), None, True))
  c = tiny_config("/nonexistent")
  c.model.name = "mlp"
  with pytest.raises(ValueError, match="model.class_conditional = True needs model.name = 'unet'"):
    config_lib.validate_config(c)


def test_every_config_file_builds_its_model(data_dir):
  """configs/default.py trains as it stands (the built-in digits job), and every experiment file builds: its model
  fits its images, its keys are valid (the datasets that need preparing are described, not read)."""
  c = default.get_config()
  c.data.data_dir = data_dir
  exp = experiment.build(c)
  assert exp.info.name == "digits" and exp.config.training.num_train_steps > 0
  shapes = {"cifar10": (32, 32, 3), "mnist": (28, 28, 1), "swiss_roll": (2,), "digits": (8, 8, 1),
            "folder": (64, 64, 3)}
  for path in sorted(pathlib.Path(helpers.ROOT, "configs").glob("[a-z]*.py")):
    c = importlib.import_module(f"configs.{path.stem}").get_config()
    c.data.data_dir = data_dir
    if c.data.dataset == "folder":  # the one key its command line adds
      c.data.image_dir = "images"
    name = c.data.dataset
    shape = shapes.get(name, (256, 256, 3))
    info = data.DatasetInfo(name, shape, 10 if name in ("cifar10", "mnist", "digits") else None, name != "swiss_roll")
    experiment.build(c, info=info)


def test_every_run_of_the_objectives_benchmark_is_a_valid_config(data_dir):
  """benchmarks/objectives.py's runs are configs/digits.py with its objective before issue 26 and one change each;
  those with zero terminal SNR must still be sampled by a sampler that starts at t = T."""
  args = argparse.Namespace(steps=100, every=50, quality_samples=297, data_dir=data_dir)
  for name, overrides in objectives.RUNS.items():
    c = objectives.run_config(overrides, args)
    config_lib.validate_config(c)
    assert c.sampling.sampler == "ancestral" and c.sampling.num_steps is None, name

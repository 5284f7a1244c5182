"""Every code block of README.md runs as written, at small shapes.

Python blocks are executed with the sizes in `SMALL_PYTHON` replaced (each must occur
in the block, so a README edit cannot silently skip one). In bash blocks, every
`python main.py` command runs with `helpers.SMALL_MAIN` appended and `workdirs/` moved
to a temporary directory (the `readme_runs` fixture of conftest.py, which test_cli.py
reads as a new user's first run); `pip install -e ".[EXTRA]"` lines must name extras that
pyproject.toml defines (installing them needs an accelerator or the network).
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import helpers
from diffusion_jax import data, evaluate, experiment

PYTHON = helpers.readme_blocks("python")
SMALL_PYTHON = {"num_diffusion_steps=1000": "num_diffusion_steps=50", "ch=128": "ch=32",
                "ch_mult=(1, 2, 2, 2)": "ch_mult=(1, 2)"}
_main_commands = helpers.readme_main_commands
README = helpers.README


def test_readme_has_the_blocks_this_module_runs():
  assert len(PYTHON) == 3
  assert [c[2:4] for c in _main_commands()] == [["--config", "configs/digits.py"]] * 3
  modes = [c[c.index("--mode") + 1] if "--mode" in c else "train" for c in _main_commands()]
  assert modes == ["train", "sample", "eval"]


def test_pip_extras_in_readme_exist():
  tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
  with open(os.path.join(helpers.ROOT, "pyproject.toml"), "rb") as f:
    extras = set(tomllib.load(f)["project"]["optional-dependencies"])
  named = {e for group in re.findall(r'pip install -e "\.\[([\w,]+)\]"', README) for e in group.split(",")}
  assert {"test", "cuda12", "tpu", "tensorboard", "reference"} <= named
  assert named <= extras


def test_library_example_draws_samples():
  code = PYTHON[0]
  for big, small in SMALL_PYTHON.items():
    assert big in code
    code = code.replace(big, small)
  scope: dict = {}
  exec(compile(code, "README.md python block 1", "exec"), scope)
  samples = np.asarray(scope["samples"])
  assert samples.shape == (16, 32, 32, 3)
  assert np.isfinite(samples).all() and np.abs(samples).max() <= 1.0


@pytest.fixture
def trained_workdir(readme_runs):
  return readme_runs


def test_main_commands_train_sample_and_evaluate(trained_workdir):
  workdir, _ = trained_workdir
  assert os.path.exists(os.path.join(workdir, "samples", "step_00000020.png"))
  assert np.load(os.path.join(workdir, "samples_00000020.npz"))["samples"].shape == (256, 8, 8, 1)
  assert os.path.exists(os.path.join(workdir, "eval_test_00000020.json"))


def test_loading_a_trained_workdir_and_sampling(trained_workdir):
  workdir, _ = trained_workdir
  code = PYTHON[1]
  assert '"workdirs/digits"' in code
  scope: dict = {}
  exec(compile(code.replace('"workdirs/digits"', repr(workdir)), "README.md python block 2", "exec"), scope)
  run, samples, eps = scope["run"], scope["samples"], scope["eps"]
  assert run.step == 20 and run.config.diffusion.num_diffusion_steps == 50
  assert samples.shape == (64, 8, 8, 1) and np.abs(samples).max() <= 1.0
  assert eps.shape == (64, 8, 8, 1)
  # The same samples as `--mode sample` (EMA parameters, key(sampling.seed), batch 0 of 64).
  cli = np.load(os.path.join(workdir, "samples_00000020.npz"))["samples"]
  np.testing.assert_array_equal(data.to_uint8(samples), cli[:64])


def test_export_and_its_reload(trained_workdir):
  """README's export commands (its text block), in-process: the export holds the run's EMA parameters, and
  --mode sample from it draws the run's own samples (same seed); then README's python block reads it."""
  workdir, _ = trained_workdir
  export = [line for line in README.splitlines() if line.startswith("python main.py") and "--mode" in line][-2:]
  assert "--mode export" in export[0] and "--config.pretrained=workdirs/digits/diffusers" in export[1]
  config = experiment.load(workdir).config
  evaluate.export(config, workdir)
  config.pretrained = os.path.join(workdir, "diffusers")
  again = os.path.join(os.path.dirname(workdir), "digits_export")
  from_export = np.load(evaluate.sample(config, again))["samples"]
  from_run = np.load(os.path.join(workdir, "samples_00000020.npz"))["samples"]
  np.testing.assert_array_equal(from_export, from_run[:len(from_export)])
  code = PYTHON[2]
  assert '"workdirs/digits/diffusers"' in code
  scope: dict = {}
  exec(compile(code.replace('"workdirs/digits/diffusers"', repr(os.path.join(workdir, "diffusers"))),
               "README.md python block 3", "exec"), scope)
  ckpt = scope["ckpt"]
  assert ckpt.image_shape == (8, 8, 1) and ckpt.model.ch_mult == (1, 2)

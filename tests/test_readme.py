"""Every code block of README.md runs as written, at small shapes.

Python blocks are executed with the sizes in `SMALL_PYTHON` replaced (each must occur
in the block, so a README edit cannot silently skip one). In bash blocks, every
`python main.py` command runs with `SMALL_MAIN` appended and `workdirs/` moved to a
temporary directory; `pip install -e ".[EXTRA]"` lines must name extras that
pyproject.toml defines (installing them needs an accelerator or the network).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

import helpers
from diffusion_jax import data

README = open(os.path.join(helpers.ROOT, "README.md")).read()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
BASH = [code for lang, code in BLOCKS if lang == "bash"]

SMALL_PYTHON = {"num_diffusion_steps=1000": "num_diffusion_steps=50", "ch=128": "ch=32"}
SMALL_MAIN = ["--config.training.num_train_steps=20", "--config.training.warmup_steps=5",
              "--config.training.log_every_steps=10", "--config.training.checkpoint_every_steps=20",
              "--config.training.sample_every_steps=20", "--config.diffusion.num_diffusion_steps=50",
              "--config.sampling.preview_samples=16", "--config.eval.num_examples=100"]


def _main_commands() -> list[list[str]]:
  commands = []
  for block in BASH:
    for line in block.splitlines():
      for part in line.split("#")[0].split("&&"):
        words = shlex.split(part)
        if words[:2] == ["python", "main.py"] and "NAME.py" not in part:
          commands.append(words)
  return commands


def test_readme_has_the_blocks_this_module_runs():
  assert len(PYTHON) == 3
  assert [c[2:4] for c in _main_commands()] == [["--config", "configs/digits.py"]] * 5
  modes = [c[c.index("--mode") + 1] if "--mode" in c else "train" for c in _main_commands()]
  assert modes == ["train", "sample", "eval", "export", "sample"]


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


@pytest.fixture(scope="module")
def trained_workdir(data_dir, tmp_path_factory):
  """README's main.py commands (train, sample, eval) run in order in a temporary workdirs/."""
  root = str(tmp_path_factory.mktemp("readme"))
  outputs = []
  for words in _main_commands():
    cmd = [sys.executable, os.path.join(helpers.ROOT, "main.py")] + [
        w.replace("workdirs/", os.path.join(root, "workdirs") + "/") for w in words[2:]]
    cmd += SMALL_MAIN + [f"--config.data.data_dir={data_dir}"]
    proc = subprocess.run(cmd, env=helpers.env(), cwd=helpers.ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs.append(proc.stderr)
  return os.path.join(root, "workdirs", "digits"), outputs


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


def test_export_and_its_reload_sample_as_the_run_does(trained_workdir):
  """README's export, then --mode sample from the export: the run's own samples (EMA parameters, same seed)."""
  workdir, _ = trained_workdir
  from_export = np.load(os.path.join(os.path.dirname(workdir), "digits_export", "samples_pretrained.npz"))["samples"]
  from_run = np.load(os.path.join(workdir, "samples_00000020.npz"))["samples"]
  np.testing.assert_array_equal(from_export, from_run[:len(from_export)])
  code = PYTHON[2]
  assert '"workdirs/digits/diffusers"' in code
  scope: dict = {}
  exec(compile(code.replace('"workdirs/digits/diffusers"', repr(os.path.join(workdir, "diffusers"))),
               "README.md python block 3", "exec"), scope)
  ckpt = scope["ckpt"]
  assert ckpt.image_shape == (8, 8, 1) and ckpt.model.ch_mult == (1, 2)

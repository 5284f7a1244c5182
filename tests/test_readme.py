"""Every code block of README.md runs as written, at small shapes.

Python blocks are executed with the sizes in `SMALL_PYTHON` replaced (each must occur
in the block, so a README edit cannot silently skip one). In bash blocks, every
`python main.py` command runs with `helpers.SMALL_MAIN` appended and `workdirs/` moved
to a temporary directory and a fresh TFDS data_dir, which makes them a new user's first
run: their logs are checked too; `pip install -e ".[EXTRA]"` lines must name extras that
pyproject.toml defines (installing them needs an accelerator or the network).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import helpers
from diffusion_jax.run import data, modes, trained

PYTHON = helpers.readme_blocks("python")
SMALL_PYTHON = {"num_diffusion_steps=1000": "num_diffusion_steps=50"}
_main_commands = helpers.readme_main_commands
README = helpers.README


def test_readme_has_the_blocks_this_module_runs():
  assert len(PYTHON) == 3
  assert [c[2:4] for c in _main_commands()] == [["--config", "configs/digits.py"]] * 6
  modes = [c[c.index("--mode") + 1] if "--mode" in c else "train" for c in _main_commands()]
  assert modes == ["train", "sample", "eval", "edit", "edit", "edit"]


def test_pip_extras_in_readme_exist():
  tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
  with open(os.path.join(helpers.ROOT, "pyproject.toml"), "rb") as f:
    extras = set(tomllib.load(f)["project"]["optional-dependencies"])
  named = {e for group in re.findall(r'pip install -e "\.\[([\w,]+)\]"', README) for e in group.split(",")}
  assert {"test", "cuda12", "tpu", "tensorboard", "reference"} <= named
  assert named <= extras


def test_the_first_example_is_plain_jax_with_the_default_variance():
  code = PYTHON[0]
  assert "@jax.jit" in code and "compiler" not in code
  assert "variance" not in code and "fixed_" not in code


@pytest.mark.slow
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
def readme_runs(tmp_path_factory):
  """README's main.py commands (train, sample, eval) run in order, at small sizes, in a temporary workdirs/ and a
  fresh TFDS data_dir: a new user's first session.

  Returns:
    (the digits workdir, the CompletedProcess of each command).
  """
  root = str(tmp_path_factory.mktemp("readme"))
  procs = []
  for words in helpers.readme_main_commands():
    cmd = [sys.executable, os.path.join(helpers.ROOT, "main.py")] + [
        w.replace("workdirs/", os.path.join(root, "workdirs") + "/") for w in words[2:]]
    cmd += helpers.SMALL_MAIN + [f"--config.data.data_dir={os.path.join(root, 'tfds')}"]
    proc = subprocess.run(cmd, env=helpers.env(), cwd=helpers.ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    procs.append(proc)
  return os.path.join(root, "workdirs", "digits"), procs


@pytest.fixture
def trained_workdir(readme_runs):
  return readme_runs


@pytest.mark.slow
def test_main_commands_train_sample_and_evaluate(trained_workdir):
  workdir, _ = trained_workdir
  assert os.path.exists(os.path.join(workdir, "samples", "step_00000020.png"))
  assert np.load(os.path.join(workdir, "samples_00000020.npz"))["samples"].shape == (256, 8, 8, 1)
  assert os.path.exists(os.path.join(workdir, "eval_test_00000020.json"))
  for task in ("inpaint", "sdedit", "invert"):  # README's edit commands, on the test split's first 64 digits
    with np.load(os.path.join(workdir, f"edit_{task}_00000020.npz")) as f:
      assert f["images"].shape == (64, 8, 8, 1)


@pytest.mark.slow
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


@pytest.mark.slow
def test_export_and_its_reload(trained_workdir):
  """README's export commands (its text block), in-process: the export holds the run's EMA parameters, and
  --mode sample from it draws the run's own samples (same seed); then README's python block reads it."""
  workdir, _ = trained_workdir
  export = [line for line in README.splitlines() if line.startswith("python main.py") and "--mode" in line][-2:]
  assert "--mode export" in export[0] and "--config.pretrained=workdirs/digits/diffusers" in export[1]
  config = trained.load(workdir).config
  modes.export(config, workdir)
  config.pretrained = os.path.join(workdir, "diffusers")
  again = os.path.join(os.path.dirname(workdir), "digits_export")
  from_export = np.load(modes.sample(config, again))["samples"]
  from_run = np.load(os.path.join(workdir, "samples_00000020.npz"))["samples"]
  np.testing.assert_array_equal(from_export, from_run[:len(from_export)])
  code = PYTHON[2]
  assert '"workdirs/digits/diffusers"' in code
  scope: dict = {}
  exec(compile(code.replace('"workdirs/digits/diffusers"', repr(os.path.join(workdir, "diffusers"))),
               "README.md python block 3", "exec"), scope)
  ckpt = scope["ckpt"]
  assert ckpt.image_shape == (8, 8, 1) and ckpt.model.ch_mult == (1, 2)


# main.py as a user meets it: README's first commands are a fresh machine's first run.
# absl's warning/error prefixes (W1123 12:00:00.000 ...) and Python's own.
WARNING_LINE = re.compile(r"^(W|E)\d{4} |^WARNING|Warning:", re.M)


@pytest.fixture
def fresh_run(readme_runs):
  """README's first commands (digits: train, sample, eval) on an empty TFDS data_dir, prepared on the way."""
  _, procs = readme_runs
  return dict(zip(("train", "sample", "eval"), procs))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["train", "sample", "eval"])
def test_log_is_plain_lines_without_warnings(fresh_run, mode):
  out = fresh_run[mode].stdout + fresh_run[mode].stderr
  assert "\r" not in out and "\x1b" not in out, "terminal control characters in a redirected log"
  assert not WARNING_LINE.search(out), WARNING_LINE.search(out).group(0) + out[-3000:]


@pytest.mark.slow
def test_first_run_prepares_digits_and_reports_progress(fresh_run):
  out = fresh_run["train"].stderr
  assert "Prepared the built-in digits dataset" in out
  assert "Compiling the train step" in out
  assert re.search(r"step 20/20 .* ETA 0:00:00", out)
  assert re.search(r"preview samples at step 20 \(\d+ samples, 11 steps each\): \d+/\d+ steps \(100%\), .* ETA 0:00:00",
                   out)
  assert "points/s" not in out and "images/s" in out


@pytest.mark.slow
def test_sample_and_eval_report_progress_inside_the_compiled_loops(fresh_run):
  assert re.search(r"sampling \(256 samples, 11 steps each\): 44/44 steps \(100%\)", fresh_run["sample"].stderr)
  assert re.search(r"eval bits/dim on test: 50/50 timesteps of a batch \(100%\)", fresh_run["eval"].stderr)

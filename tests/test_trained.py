"""A workdir written by an earlier version of the library loads and samples as it did.

`tests/fixtures/workdir-2026-12` is a tiny class-conditional run (configs/tiny.py, 4 steps) trained by the code
of 7947d09, before the runtime moved under `diffusion_jax.run` and the math API changed; `reference_samples.npz`
holds what that code computed from it: the network's output on fixed inputs and `load(workdir).sample(8, key(0))`.
"""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from diffusion_jax.run import data, trained

FIXTURE = os.path.join(helpers.ROOT, "tests", "fixtures", "workdir-2026-12")


@pytest.fixture(scope="module")
def reference():
  with np.load(os.path.join(FIXTURE, "reference_samples.npz")) as f:
    return dict(f)


def test_an_earlier_workdir_loads_with_its_parameters(reference):
  run = trained.load(FIXTURE)
  assert run.step == 4 and run.config.diffusion.num_diffusion_steps == 50
  t, y = jnp.array([0, 10, 25, 49]), jnp.array([0, 3, 7, 10])  # 10: the null label
  eps = run.model.apply({"params": run.params}, reference["x"], t, y)
  np.testing.assert_allclose(eps, reference["eps"], rtol=1e-5, atol=1e-6)


def test_an_earlier_workdir_samples_what_it_sampled_before(reference):
  samples = trained.load(FIXTURE).sample(8, jax.random.key(0))
  np.testing.assert_allclose(samples, reference["samples"], atol=1e-4)


@pytest.mark.slow
def test_main_samples_from_an_earlier_workdir(tmp_path, data_dir, reference):
  workdir = str(tmp_path / "w")
  shutil.copytree(FIXTURE, workdir)
  helpers.run_main("tiny.py", workdir, f"--config.data.data_dir={data_dir}", mode="sample")
  with np.load(os.path.join(workdir, "samples_00000004.npz")) as f:
    stored, labels = f["samples"], f["labels"]
  np.testing.assert_array_equal(labels, np.arange(8) % 10)
  diff = np.abs(stored.astype(int) - data.to_uint8(reference["samples"]).astype(int))
  assert diff.max() <= 1  # a level at most, where float rounding crosses a boundary


def test_samples_are_in_the_data_range_also_without_clipping_x0():
  """With `sampling.clip_denoised = False` Heun's chain on this barely trained model leaves [-1, 1] far behind;
  `sample` returns its last state clipped there (as every stored image is), and the flag still changes the chain."""
  heun = {"sampling.sampler": "heun", "sampling.num_steps": 9, "sampling.churn": 0.0}
  unclipped = trained.load(FIXTURE, **heun, **{"sampling.clip_denoised": False}).sample(8, jax.random.key(0))
  clipped = trained.load(FIXTURE, **heun).sample(8, jax.random.key(0))
  assert np.abs(unclipped).max() <= 1.0 and (np.abs(unclipped) == 1.0).mean() > 0.1
  assert np.abs(unclipped - clipped).max() > 0.01


def test_a_directory_that_is_not_a_workdir_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a workdir of main.py --mode train"):
    trained.load(str(tmp_path))

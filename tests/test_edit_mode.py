"""`main.py --mode edit` end to end on a tiny trained workdir (tests/fixtures/workdir-2026-12): inpainting keeps the
known pixels, SDEdit from a small step stays near its input, inversion round-trips, the outputs are named and shaped
as documented, and inputs that do not fit the model are refused before anything compiles."""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

import helpers
from diffusion_jax.run import edit

FIXTURE = os.path.join(helpers.ROOT, "tests", "fixtures", "workdir-2026-12")


@pytest.fixture
def workdir(tmp_path):
  path = str(tmp_path / "w")
  shutil.copytree(FIXTURE, path)
  return path


def test_builtin_masks_fill_the_named_region():
  left = edit.builtin_mask("left_half", 8, 8)
  assert left[:, :4].all() and not left[:, 4:].any()
  assert edit.builtin_mask("bottom_half", 8, 6)[4:].all() and not edit.builtin_mask("bottom_half", 8, 6)[:4].any()
  for side in (8, 32):
    center = edit.builtin_mask("center", side, side)
    q = side // 4
    assert center[q:side - q, q:side - q].all() and center.sum() == (side // 2) ** 2


def test_mask_files_and_their_shapes(tmp_path):
  png = str(tmp_path / "m.png")
  Image.fromarray(np.where(np.arange(8)[None, :] < 3, 255, 0).repeat(8, 0).astype(np.uint8)).save(png)
  mask = edit.read_mask(png, 5, 8, 8)
  assert mask.shape == (5, 8, 8, 1) and mask[..., :3, 0].all() and not mask[..., 3:, 0].any()
  per_example = str(tmp_path / "m.npz")
  np.savez(per_example, mask=np.eye(8, dtype=np.uint8)[None].repeat(5, 0))
  np.testing.assert_array_equal(edit.read_mask(per_example, 5, 8, 8)[..., 0], np.eye(8)[None].repeat(5, 0))
  for bad in (np.zeros((5, 7, 8)), np.zeros((4, 8, 8))):
    np.savez(per_example, mask=bad)
    with pytest.raises(ValueError, match="edit.mask = .* has shape"):
      edit.read_mask(per_example, 5, 8, 8)


def _inputs(workdir, data_dir):
  from diffusion_jax.run import trained
  run = trained.load(workdir, **{"data.data_dir": data_dir})
  return edit.read_inputs(run.config, run.experiment)


@pytest.mark.slow
def test_inpainting_keeps_the_known_pixels_with_repaint_and_with_ddim(workdir, data_dir, tmp_path):
  """RePaint on the test split's first images (their labels given to the class-conditional model), and DDIM on an
  .npz input with a PNG mask: the known pixels are the input's, the grid has (input, mask, result) triples, four
  a row."""
  helpers.run_main("tiny.py", workdir, f"--config.data.data_dir={data_dir}", "--config.edit.mask=left_half",
                   "--config.edit.resample=3", "--config.edit.jump_length=5", mode="edit")
  x, labels = _inputs(workdir, data_dir)
  with np.load(os.path.join(workdir, "edit_inpaint_00000004.npz")) as f:
    out, out_labels = f["images"], f["labels"]
  assert out.shape == x.shape == (8, 8, 8, 1) and out.dtype == np.uint8
  np.testing.assert_array_equal(out_labels, labels)
  np.testing.assert_array_equal(out[:, :, 4:], x[:, :, 4:])
  assert np.abs(out[:, :, :4].astype(int) - x[:, :, :4]).mean() > 10
  with Image.open(os.path.join(workdir, "edit_inpaint_00000004.png")) as grid:
    assert 4 < grid.width / grid.height < 8  # 12 columns (4 triples), 2 rows
  images = str(tmp_path / "in.npz")
  np.savez(images, images=x[:3])
  mask = str(tmp_path / "mask.png")
  Image.fromarray(np.where(np.arange(8)[:, None] < 5, 255, 0).repeat(8, 1).astype(np.uint8)).save(mask)
  helpers.run_main("tiny.py", workdir, f"--config.data.data_dir={data_dir}", f"--config.edit.input={images}",
                   f"--config.edit.mask={mask}", "--config.sampling.sampler=ddim", "--config.sampling.num_steps=10",
                   mode="edit")
  with np.load(os.path.join(workdir, "edit_inpaint_00000004.npz")) as f:
    out = f["images"]
  assert out.shape == (3, 8, 8, 1)
  np.testing.assert_array_equal(out[:, 5:], x[:3, 5:])


@pytest.mark.slow
def test_sdedit_and_inversion_on_the_command_line(workdir, data_dir):
  """SDEdit from step 1 stays within a few levels of its input, from step 49 (T - 1) it does not, and its progress
  counts Heun's steps to the end (from step 1: 2 of the 5 steps, 3 calls); DDIM inversion and decoding (heun is the
  config's sampler: inversion is DDIM's) returns the input to within a few levels."""
  x, _ = _inputs(workdir, data_dir)
  errors = {}
  for start, steps, calls in ((1, 2, 3), (49, 5, 9)):
    proc = helpers.run_main("tiny.py", workdir, f"--config.data.data_dir={data_dir}", "--config.edit.task=sdedit",
                            f"--config.edit.start={start}", "--config.sampling.sampler=heun",
                            "--config.sampling.num_steps=9", mode="edit")
    assert re.search(rf"edit sdedit \(8 images, {calls} network calls each\): {steps}/{steps} steps \(100%\)",
                     proc.stderr), proc.stderr[-2000:]
    with np.load(os.path.join(workdir, "edit_sdedit_00000004.npz")) as f:
      errors[start] = np.abs(f["images"].astype(int) - x).mean()
  assert errors[1] < 12 < 60 < errors[49], errors
  helpers.run_main("tiny.py", workdir, f"--config.data.data_dir={data_dir}", "--config.edit.task=invert",
                   "--config.sampling.sampler=heun", "--config.sampling.num_steps=20", mode="edit")
  with np.load(os.path.join(workdir, "edit_invert_00000004.npz")) as f:
    assert f["latents"].shape == x.shape and f["latents"].dtype == np.float32
    assert np.abs(f["images"].astype(int) - x).mean() < 10


@pytest.mark.parametrize("what, match", [("rgb_png", "is a colour image; this model makes images of 1 channel"),
                                         ("small_npz", r"holds uint8 images of shape \(2, 4, 4, 1\)"),
                                         ("mask_npz", r"edit.mask = .* has shape \(3, 3\)")])
def test_inputs_that_do_not_fit_the_model_are_refused_before_compiling(what, match, workdir, data_dir, tmp_path):
  flags = {"rgb_png": lambda p: Image.new("RGB", (8, 8)).save(p + ".png") or [f"--config.edit.input={p}.png"],
           "small_npz": lambda p: np.savez(p, images=np.zeros((2, 4, 4, 1), np.uint8)) or [
               f"--config.edit.input={p}.npz"],
           "mask_npz": lambda p: np.savez(p, mask=np.ones((3, 3))) or [f"--config.edit.mask={p}.npz"]}[what](
               str(tmp_path / "f"))
  env = helpers.env()
  env["JAX_LOG_COMPILES"] = "1"
  cmd = helpers.main_command("tiny.py", workdir, f"--config.data.data_dir={data_dir}", *flags, mode="edit")
  proc = subprocess.run(cmd, env=env, cwd=helpers.ROOT, capture_output=True, text=True, timeout=120)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 1 and re.search(match, out), out[-3000:]
  assert "Traceback" not in out
  assert "Finished XLA compilation" not in out, "compiled before failing"


@pytest.mark.slow
def test_one_and_four_devices_edit_the_same(data_dir, tmp_path):
  """The edit programs shard the batch over the mesh; noise (here Heun's churn) follows the step, not the device
  (determinism only: correctness is tests/test_editing.py's)."""
  flags = ["--config.edit.task=sdedit", "--config.sampling.sampler=heun", "--config.sampling.num_steps=9",
           "--config.sampling.churn=5.0"]
  results = []
  for devices in (1, 4):
    workdir = str(tmp_path / f"w{devices}")
    shutil.copytree(FIXTURE, workdir)
    helpers.run_main("tiny.py", workdir, f"--config.data.data_dir={data_dir}", *flags, mode="edit", devices=devices)
    task = "sdedit" if "--config.edit.task=sdedit" in flags else "inpaint"
    with np.load(os.path.join(workdir, f"edit_{task}_00000004.npz")) as f:
      results.append(f["images"].astype(int))
  assert np.abs(results[0] - results[1]).max() <= 1

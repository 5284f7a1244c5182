"""Files written complete or not at all: an error inside the write leaves the old file as it was, and no temporary."""

import json
import os

import numpy as np
import pytest

from diffusion_jax import files


def test_json_and_npz_are_written_whole(tmp_path):
  path = str(tmp_path / "sub" / "a.json")
  files.write_json(path, {"x": [1, 2]})
  with open(path) as f:
    assert json.load(f) == {"x": [1, 2]}
  npz = str(tmp_path / "b.npz")
  files.write_npz(npz, {"w": np.arange(6.0).reshape(2, 3)})
  with np.load(npz) as f:
    np.testing.assert_array_equal(f["w"], np.arange(6.0).reshape(2, 3))
  assert sorted(os.listdir(tmp_path)) == ["b.npz", "sub"]


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
  path = str(tmp_path / "a.json")
  files.write_json(path, {"version": 1})
  with pytest.raises(RuntimeError, match="disk full"):
    with files.atomic_open(path) as f:
      f.write('{"version": 2, "trunc')
      raise RuntimeError("disk full")
  with open(path) as f:
    assert json.load(f) == {"version": 1}
  assert os.listdir(tmp_path) == ["a.json"]


def test_only_write_modes_are_taken(tmp_path):
  with pytest.raises(ValueError, match="mode = 'a' is invalid"):
    with files.atomic_open(str(tmp_path / "x"), "a"):
      pass


def test_fsync_dir_flushes_a_directory_and_refuses_a_missing_one(tmp_path):
  files.fsync_dir(str(tmp_path))
  with pytest.raises(FileNotFoundError):
    files.fsync_dir(str(tmp_path / "missing"))

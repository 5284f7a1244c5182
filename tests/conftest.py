"""One persistent XLA compilation cache for the whole session: the many runs of the same tiny
programs (in-process and in main.py subprocesses, which inherit the environment) compile once.

On an accelerator, matmuls and convolutions run at full float32 precision (XLA's default on GPUs is TF32, whose
10-bit mantissa is far from the float64 references), and the tests marked `cpu_only` are skipped."""

import json
import os
import shutil
import tempfile

import jax
import pytest

_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="diffusion_jax_xla_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
if jax.default_backend() != "cpu":
  jax.config.update("jax_default_matmul_precision", "highest")


def pytest_collection_modifyitems(config, items):
  if jax.default_backend() == "cpu":
    return
  skip = pytest.mark.skip(reason=f"a property of XLA:CPU; this session runs on {jax.default_backend()}")
  for item in items:
    if "cpu_only" in item.keywords:
      item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A TFDS data_dir with the digits prepared (before any subprocess reads it)."""
  from diffusion_jax.run import data
  d = str(tmp_path_factory.mktemp("tfds"))
  data.tfds_source("digits", "train", d)
  return d


@pytest.fixture(scope="session")
def tfrecord_dir(data_dir, tmp_path_factory):
  """The digits as tfds writes them by default with TensorFlow (tfrecord): not readable by data_source."""
  d = str(tmp_path_factory.mktemp("tfrecord"))
  shutil.copytree(os.path.join(data_dir, "digits"), os.path.join(d, "digits"))
  info_path = os.path.join(d, "digits", "1.0.0", "dataset_info.json")
  with open(info_path) as f:
    info = json.load(f)
  info["fileFormat"] = "tfrecord"
  with open(info_path, "w") as f:
    json.dump(info, f)
  return d


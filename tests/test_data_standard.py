"""The standard datasets prepared without TensorFlow, from archives built here in their authors' exact formats: the
CIFAR python pickles (Python 2 protocol, bytes keys, rows of 1024 red, green and blue values) and the gzipped MNIST
idx files. The records are checked against the arrays the archives were made from."""

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest

import helpers
from configs import tiny
from diffusion_jax.run import data
from diffusion_jax.run.data import records, standard


def _add(tar, name, payload):
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def _rows(images):
  """(N, 32, 32, 3) -> the published (N, 3072) rows: the red plane, then green, then blue, each row-major."""
  return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def _cifar10(path, rng, per_batch=6):
  images = rng.integers(0, 256, (6 * per_batch, 32, 32, 3), np.uint8)
  labels = rng.integers(0, 10, 6 * per_batch)
  names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
  with tarfile.open(path, "w:gz") as tar:
    for i, stem in enumerate(["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                              "test_batch"]):
      part = slice(i * per_batch, (i + 1) * per_batch)
      batch = {b"batch_label": stem.encode(), b"labels": [int(v) for v in labels[part]],
               b"data": _rows(images[part]), b"filenames": [b"x.png"] * per_batch}
      _add(tar, f"cifar-10-batches-py/{stem}", pickle.dumps(batch, protocol=2))
    meta = {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}
    _add(tar, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
  n = 5 * per_batch
  return {"train": (images[:n], labels[:n]), "test": (images[n:], labels[n:])}, [n.decode() for n in names]


def _cifar100(path, rng):
  images = rng.integers(0, 256, (40, 32, 32, 3), np.uint8)
  fine, coarse = rng.integers(0, 100, 40), rng.integers(0, 20, 40)
  names = [f"class_{i}".encode() for i in range(100)]
  with tarfile.open(path, "w:gz") as tar:
    for stem, part in [("train", slice(0, 30)), ("test", slice(30, 40))]:
      batch = {b"filenames": [b"x.png"] * 10, b"batch_label": stem.encode(), b"fine_labels": fine[part].tolist(),
               b"coarse_labels": coarse[part].tolist(), b"data": _rows(images[part])}
      _add(tar, f"cifar-100-python/{stem}", pickle.dumps(batch, protocol=2))
    meta = {b"fine_label_names": names, b"coarse_label_names": [b"c"] * 20}
    _add(tar, "cifar-100-python/meta", pickle.dumps(meta, protocol=2))
  return {"train": (images[:30], fine[:30]), "test": (images[30:], fine[30:])}, [n.decode() for n in names]


def _idx(path, array, code):
  header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def _mnist(folder, rng):
  os.makedirs(folder, exist_ok=True)
  splits = {}
  for split, stem, n in [("train", "train", 30), ("test", "t10k", 12)]:
    images, labels = rng.integers(0, 256, (n, 28, 28), np.uint8), rng.integers(0, 10, n)
    _idx(os.path.join(folder, f"{stem}-images-idx3-ubyte.gz"), images, 8)
    _idx(os.path.join(folder, f"{stem}-labels-idx1-ubyte.gz"), labels, 8)
    splits[split] = (images[..., None], labels)
  return splits


def _md5s(paths):
  return {os.path.basename(p): hashlib.md5(open(p, "rb").read()).hexdigest() for p in paths}


def _check_records(info, splits, data_dir):
  for split, (images, labels) in splits.items():
    source = data.image_source(info, split, data_dir)
    assert len(source) == len(images)
    np.testing.assert_array_equal(np.stack([source[i]["image"] for i in range(len(source))]), images)
    np.testing.assert_array_equal([int(source[i]["label"]) for i in range(len(source))], labels)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashion_mnist"])
def test_prepared_records_equal_the_published_arrays_and_the_configs_read_them(tmp_path, name):
  rng = np.random.default_rng(0)
  data_dir = str(tmp_path / "data_dir")
  if name.startswith("cifar"):
    archive = str(tmp_path / next(iter(standard.ARCHIVES[name])))
    splits, names = (_cifar10 if name == "cifar10" else _cifar100)(archive, rng)
    checksums = _md5s([archive])
  else:
    archive = str(tmp_path / "idx")
    splits = _mnist(archive, rng)
    names = list(standard.FASHION_CLASSES) if name == "fashion_mnist" else [str(i) for i in range(10)]
    checksums = _md5s([os.path.join(archive, f) for f in standard.ARCHIVES[name]])
  path = standard.prepare(name, archive=archive, data_dir=data_dir, checksums=checksums)
  assert path == standard.prepared_path(name, data_dir)
  c = tiny.get_config()
  c.data.update(dataset=name, data_dir=data_dir)
  info = data.dataset_info(c)  # what configs/NAME.py reads: these records, not TFDS's (absent) copy
  assert info.records == path and info.class_names == tuple(names)
  assert info.shape == splits["train"][0].shape[1:]
  _check_records(info, splits, data_dir)
  # The training stream parses these records straight from their bytes (the fast path) into the same pixels.
  assert records.stores_int64_tensors(data.image_source(info, "train", data_dir))
  batch = data.train_batches(c, info)[1]
  order = data.stream_indices(c.seed, len(splits["train"][0]), 8 + np.arange(8))
  np.testing.assert_array_equal(batch["x"][0], splits["train"][0][order])
  np.testing.assert_array_equal(batch["label"][0], splits["train"][1][order])


def test_a_wrong_checksum_is_refused_before_anything_is_written(tmp_path):
  """The CLI with an archive that is not the published one (this test's own): one line, exit 1, no records."""
  archive = str(tmp_path / "cifar-10-python.tar.gz")
  _cifar10(archive, np.random.default_rng(0))
  data_dir = str(tmp_path / "data_dir")
  proc = subprocess.run([sys.executable, "-m", "diffusion_jax.prepare", "cifar10", "--archive", archive,
                         "--data_dir", data_dir], cwd=helpers.ROOT, env=helpers.env(), capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 1
  assert f"error: --archive {archive!r} has MD5 " in proc.stderr
  assert "not the published c58f30108f718f92721af3b95e74349a of cifar-10-python.tar.gz" in proc.stderr
  assert not os.path.exists(standard.prepared_path("cifar10", data_dir))


def test_missing_idx_files_and_a_file_for_mnist_are_refused(tmp_path):
  (tmp_path / "idx").mkdir()
  with pytest.raises(FileNotFoundError, match=r"no file train-images-idx3-ubyte.gz there \(mnist needs"):
    standard.prepare("mnist", archive=str(tmp_path / "idx"), data_dir=str(tmp_path))
  with pytest.raises(ValueError, match=r"is not a directory; mnist needs the directory that holds"):
    standard.prepare("mnist", archive=str(tmp_path / "x.gz"), data_dir=str(tmp_path))


def test_the_files_are_downloaded_where_no_archive_is_given(tmp_path, monkeypatch):
  """The download path, from a file:// URL standing for the authors' server."""
  source = str(tmp_path / "server")
  splits = _mnist(source, np.random.default_rng(1))
  files = standard.ARCHIVES["mnist"]
  monkeypatch.setitem(standard.ARCHIVES, "mnist", {
      f: (f"file://{os.path.join(source, f)}", md5) for f, (_, md5) in files.items()})
  checksums = _md5s([os.path.join(source, f) for f in files])
  data_dir = str(tmp_path / "data_dir")
  path = standard.prepare("mnist", data_dir=data_dir, checksums=checksums)
  assert sorted(os.listdir(os.path.join(data_dir, "downloads"))) == sorted(files)
  c = tiny.get_config()
  c.data.update(dataset="mnist", data_dir=data_dir)
  info = data.dataset_info(c)
  assert info.records == path
  _check_records(info, splits, data_dir)

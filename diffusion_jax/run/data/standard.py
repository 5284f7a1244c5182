"""The standard datasets prepared without TensorFlow, from the files their authors publish.

`python -m diffusion_jax.prepare cifar10|cifar100|mnist|fashion_mnist [--archive PATH] [--data_dir DIR]` reads
the CIFAR python pickles (`cifar-10-python.tar.gz`, `cifar-100-python.tar.gz`) or the four MNIST idx files
(`train-images-idx3-ubyte.gz`, ...; `--archive` is then their directory), checks their published MD5 checksums,
and writes the records `data.dataset = NAME` reads (before TFDS's own copy, where both exist) into
`DATA_DIR/diffusion_jax/NAME-vFORMAT`. Without `--archive` it downloads the files into `DATA_DIR/downloads`.
CIFAR-100's label is its fine label (100 classes).
"""

from __future__ import annotations

import argparse
import gzip
import os
import pickle
import tarfile
import urllib.request
from collections.abc import Sequence

import numpy as np
from absl import flags, logging

from diffusion_jax import files
from diffusion_jax.run.data import prepared
from diffusion_jax.run.data.arrays import ArrayReader

FORMAT = 1
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz")

# name -> {file: (url, published md5)}
ARCHIVES = {
    "cifar10": {"cifar-10-python.tar.gz": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                                           "c58f30108f718f92721af3b95e74349a")},
    "cifar100": {"cifar-100-python.tar.gz": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                                             "eb9058c3a382ffc7106e4002c42a8d85")},
    "mnist": dict(zip(_IDX, [(_MNIST + f, md5) for f, md5 in zip(_IDX, [
        "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432", "9fb629c4189551a2d022fa330f9573f3",
        "ec29112dd5afa0611ce80d1b7f02629c"])])),
    "fashion_mnist": dict(zip(_IDX, [(_FASHION + f, md5) for f, md5 in zip(_IDX, [
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe", "bef4ecab320f06d8554ea6380940ec79",
        "bb300cfdad3c16e7a12a480ee83cd310"])])),
}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")

Splits = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (images uint8 (N, H, W, C), labels int64 (N,))


def prepared_path(name: str, data_dir: str | None) -> str:
  """Where `prepare` writes `name`: `DATA_DIR/diffusion_jax/NAME-vFORMAT`."""
  return os.path.join(prepared.default_root(data_dir), f"{name}-v{FORMAT}")


def _download(url: str, path: str) -> None:
  logging.info("Downloading %s to %s.", url, path)
  try:
    with urllib.request.urlopen(url, timeout=60) as response, files.atomic_open(path, "wb") as f:
      while block := response.read(1 << 20):
        f.write(block)
  except OSError as e:
    raise OSError(f"Could not download {url} ({e}); fetch it where the network allows and pass --archive PATH.") from e


def locate(name: str, archive: str | None, data_dir: str | None, checksums: dict[str, str]) -> dict[str, str]:
  """The path of each of `name`'s published files, downloaded if `archive` is None, each checked against
  `checksums` (file -> MD5); `ValueError` for a wrong checksum, `FileNotFoundError` for a missing file."""
  published = ARCHIVES[name]
  if archive is None:
    folder = os.path.join(os.path.dirname(prepared.default_root(data_dir)), "downloads")
    os.makedirs(folder, exist_ok=True)
    paths = {file: os.path.join(folder, file) for file in published}
  elif os.path.isdir(archive):
    paths = {file: os.path.join(archive, file) for file in published}
  elif len(published) == 1:
    paths = {next(iter(published)): archive}
  else:
    raise ValueError(f"--archive {archive!r} is not a directory; {name} needs the directory that holds "
                     f"{', '.join(published)}.")
  for file, path in paths.items():
    if archive is None and not os.path.exists(path):
      _download(published[file][0], path)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"--archive {archive!r}: no file {file} there ({name} needs {', '.join(published)}).")
    digest = files.digest(path, "md5")
    if digest != checksums[file]:
      if archive is None:  # a damaged download: the next run fetches it again
        os.remove(path)
      raise ValueError(f"--archive {path!r} has MD5 {digest}, not the published {checksums[file]} of {file}: "
                       "a different or damaged file" + (" (removed)." if archive is None else "."))
  return paths


def _unpickle(tar: tarfile.TarFile, member: str) -> dict[bytes, object]:
  with tar.extractfile(member) as f:
    return pickle.load(f, encoding="bytes")  # the authors' Python 2 pickles (their checksum was checked)


def _cifar_images(batch: dict[bytes, object]) -> np.ndarray:
  """CIFAR rows (N, 3072): 1024 red, 1024 green, 1024 blue values, each row-major 32x32 -> (N, 32, 32, 3)."""
  return np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def read_cifar(path: str, name: str) -> tuple[Splits, tuple[str, ...]]:
  """The splits and class names of a CIFAR python archive."""
  with tarfile.open(path, "r:gz") as tar:
    if name == "cifar10":
      batches = [_unpickle(tar, f"cifar-10-batches-py/data_batch_{i}") for i in range(1, 6)]
      test = _unpickle(tar, "cifar-10-batches-py/test_batch")
      names = _unpickle(tar, "cifar-10-batches-py/batches.meta")[b"label_names"]
      key = b"labels"
    else:
      batches = [_unpickle(tar, "cifar-100-python/train")]
      test = _unpickle(tar, "cifar-100-python/test")
      names = _unpickle(tar, "cifar-100-python/meta")[b"fine_label_names"]
      key = b"fine_labels"
  splits = {"train": (np.concatenate([_cifar_images(b) for b in batches]),
                      np.concatenate([np.asarray(b[key], np.int64) for b in batches])),
            "test": (_cifar_images(test), np.asarray(test[key], np.int64))}
  return splits, tuple(n.decode() for n in names)


def read_idx(path: str) -> np.ndarray:
  """An idx file (gzipped): magic 0x0000 0x08 (uint8) ndim, ndim big-endian uint32 sizes, the values."""
  with gzip.open(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 or raw[:3] != b"\0\0\x08":
    raise ValueError(f"{path!r} is not an idx file of uint8 values (magic {raw[:4].hex()}).")
  ndim = raw[3]
  shape = tuple(np.frombuffer(raw, ">u4", ndim, 4).astype(int))
  values = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if values.size != np.prod(shape):
    raise ValueError(f"{path!r} holds {values.size} values, not {shape}.")
  return values.reshape(shape)


def read_mnist(paths: dict[str, str], name: str) -> tuple[Splits, tuple[str, ...]]:
  """The splits and class names of the four idx files of MNIST or Fashion-MNIST."""
  splits = {split: (read_idx(paths[f"{stem}-images-idx3-ubyte.gz"])[..., None],
                    read_idx(paths[f"{stem}-labels-idx1-ubyte.gz"]).astype(np.int64))
            for split, stem in (("train", "train"), ("test", "t10k"))}
  for split, (images, labels) in splits.items():
    if len(images) != len(labels):
      raise ValueError(f"{name} {split}: {len(images)} images but {len(labels)} labels.")
  return splits, FASHION_CLASSES if name == "fashion_mnist" else tuple(str(i) for i in range(10))


def prepare(name: str, *, archive: str | None = None, data_dir: str | None = None,
            checksums: dict[str, str] | None = None) -> str:
  """Prepares `name` from its published files (unless already prepared) and returns the records' directory.

  Args:
    name: cifar10, cifar100, mnist or fashion_mnist.
    archive: the downloaded file (CIFAR) or the directory of the four idx files (MNIST); None: download them.
    data_dir: `data.data_dir` (None: `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
    checksums: file -> MD5 expected; None: the published ones.

  Raises:
    ValueError: an unknown name, a file with the wrong checksum or format.
  """
  if name not in ARCHIVES:
    raise ValueError(f"Unknown dataset {name!r}; allowed: {', '.join(ARCHIVES)}.")
  checksums = checksums or {file: digest for file, (_, digest) in ARCHIVES[name].items()}

  def write(final: str) -> None:
    paths = locate(name, archive, data_dir, checksums)
    splits, classes = (read_cifar(next(iter(paths.values())), name) if name.startswith("cifar")
                       else read_mnist(paths, name))
    images = np.concatenate([splits["train"][0], splits["test"][0]])  # train first, then test
    labels = np.concatenate([splits["train"][1], splits["test"][1]])
    n = len(splits["train"][0])
    H, _, C = images.shape[1:]
    prepared.write(final, name=name, reader=ArrayReader(images, labels, H, C),
                   splits={"train": list(range(n)), "test": list(range(n, len(images)))}, shape=images.shape[1:],
                   class_names=classes, num_workers=0, source={"name": name, "files": {f: checksums[f] for f in paths}})

  return prepared.ensure(prepared_path(name, data_dir), write)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m diffusion_jax.prepare", description=__doc__.split("\n\n")[0])
  parser.add_argument("name", choices=sorted(ARCHIVES))
  parser.add_argument("--archive", help="the published file (CIFAR) or the directory of the four idx files (MNIST)")
  parser.add_argument("--data_dir", help="data.data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  args = parser.parse_args(argv)
  flags.FLAGS.mark_as_parsed()  # absl's log lines (as main.py's), without absl's own flags
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  try:
    path = prepare(args.name, archive=args.archive, data_dir=args.data_dir)
  except (ValueError, OSError) as e:
    parser.exit(1, f"error: {e}\n")
  print(f"{args.name} is prepared in {path}: configs with data.dataset = {args.name!r} and data.data_dir = "
        f"{args.data_dir!r} read it.")

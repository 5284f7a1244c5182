"""Files that are complete or absent: written under a temporary name beside the target, then renamed onto it.

A reader (or a run restarted after a kill at any moment) sees the old file, the new one, or none, never a
partial one: `os.replace` is atomic within a file system.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from typing import IO, Any

import numpy as np


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[IO[Any]]:
  """`open(path, mode)` for writing, renamed onto `path` only when the block ends without an exception.

  Args:
    path: the target; its directory is created if needed.
    mode: "w" (text) or "wb" (bytes).

  Yields:
    The open temporary file.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"mode = {mode!r} is invalid; allowed: 'w' or 'wb'.")
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp"
  try:
    with open(tmp, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, content: Any) -> None:
  """`content` as indented JSON at `path`, complete or absent."""
  with atomic_open(path) as f:
    json.dump(content, f, indent=2)


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  """`arrays` as an uncompressed `.npz` at `path`, complete or absent."""
  with atomic_open(path, "wb") as f:
    np.savez(f, **arrays)


def fsync_dir(path: str) -> None:
  """Flushes the entries of the directory `path` (files created or renamed into it) to disk."""
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def digest(path: str, algorithm: str) -> str:
  """The hex digest of the file at `path` (`algorithm`: a `hashlib` name such as sha1 or md5), read in 1 MB blocks."""
  h = hashlib.new(algorithm)
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()

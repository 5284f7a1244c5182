"""Checksums of a checkpoint's files: written after all of them, checked on restore.

`checksums.json` in a step's directory lists every file of the step (path relative to the step, size, SHA-256)
and the SHA-256 of that list itself, so that a damaged manifest is told apart from damaged data.
"""

from __future__ import annotations

import hashlib
import json
import os

from diffusion_jax import files as files_lib

CHECKSUMS = "checksums.json"


def _files_digest(files: dict[str, dict[str, int | str]]) -> str:
  return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def write_checksums(step_dir: str) -> None:
  """Writes `step_dir/checksums.json` for every file under `step_dir`, complete or absent (`files.atomic_open`).

  Args:
    step_dir: a checkpoint step's directory whose files are all written.
  """
  files = {}
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if not rel.startswith(CHECKSUMS):  # itself, or a temporary copy of it left by a kill
        files[rel] = {"size": os.path.getsize(path), "sha256": files_lib.digest(path, "sha256")}
  with files_lib.atomic_open(os.path.join(step_dir, CHECKSUMS)) as f:
    json.dump({"files": files, "sha256": _files_digest(files)}, f, indent=1, sort_keys=True)


def has_checksums(step_dir: str) -> bool:
  return os.path.exists(os.path.join(step_dir, CHECKSUMS))


def verify(step_dir: str) -> str | None:
  """What is wrong with the files of `step_dir` against its `checksums.json`: None if every file is there with
  its size and SHA-256, else the first problem, naming the file.

  Args:
    step_dir: a checkpoint step's directory.

  Returns:
    None, or e.g. `state/_METADATA is 120 bytes, 471 when saved (truncated or extended)`.
  """
  try:
    with open(os.path.join(step_dir, CHECKSUMS)) as f:
      manifest = json.load(f)
    files = manifest["files"]
    if manifest["sha256"] != _files_digest(files):
      raise ValueError("its own SHA-256 does not match")
  except FileNotFoundError:
    return f"{CHECKSUMS} is missing (its save did not finish, or the file was deleted)"
  except (OSError, ValueError, KeyError, TypeError) as e:  # unreadable, not JSON, or not a manifest
    return f"{CHECKSUMS} is damaged ({type(e).__name__}: {e})"
  for rel, want in sorted(files.items()):
    path = os.path.join(step_dir, rel)
    try:
      size = os.path.getsize(path)
      if size != want["size"]:
        return f"{rel} is {size} bytes, {want['size']} when saved (truncated or extended)"
      if files_lib.digest(path, "sha256") != want["sha256"]:
        return f"{rel} has changed since it was saved (SHA-256 differs)"
    except FileNotFoundError:
      return f"{rel} is missing"
    except OSError as e:  # a directory in its place, no permission, an I/O error
      return f"{rel} cannot be read ({type(e).__name__}: {e.strerror})"
  return None

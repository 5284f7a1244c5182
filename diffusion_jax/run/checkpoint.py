"""The one module that talks to Orbax: atomic, checksummed, asynchronous checkpoints with automatic resume.

A checkpoint is written to a temporary directory and renamed into place by
Orbax; then, in the background, the checksums of all its files are written
(`integrity.py`), and only a step with its checksums is complete. A process
killed mid-write leaves nothing that `latest_step` would restore; leftover
temporary directories are removed when the manager opens. On restore the
newest step whose files match their checksums is used: damaged newer steps
are reported by name and, when training, moved to `checkpoints_corrupt/`
(nothing is deleted); `on_corrupt='error'` stops instead. A save that fails
(a full disk, a lost permission) raises `CheckpointError` naming the step and
the path; the steps before it stay intact. Each checkpoint holds the
`TrainState` (step, params, EMA params, optimizer state: the step is also the
data position) and a small JSON record.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
from typing import Any, NoReturn

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from diffusion_jax.run import integrity, logs

# Orbax warns that a read-only manager's directory is read only: our own choice (sample/eval), not a fault.
logs.silence(r"Given directory is read only")

ON_CORRUPT = ("fallback", "error")


def _sync_processes(name: str) -> None:
  """Every process waits here for the others (nothing with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


class CheckpointError(RuntimeError):
  """A checkpoint that could not be written, or none that can be trusted: the message says which and where."""


def _stored(state: Any) -> Any:
  """The tree a checkpoint holds: a dataclass state's fields without the unset (None) ones, so that a state
  without the optional parts (the importance sampler's loss history) is stored as before they existed."""
  if not dataclasses.is_dataclass(state):
    return state
  return {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if getattr(state, f.name) is not None}


def _leaf_name(path: tuple[Any, ...]) -> str:
  """`params/conv_in/bias`: one spelling for attribute, dict-key and index paths (Orbax stores all as keys)."""
  return "/".join(str(next(getattr(k, a) for a in ("key", "name", "idx") if hasattr(k, a))) for k in path)


class Checkpointer:
  """Saves and restores the training state under `workdir/checkpoints`.

  Args:
    workdir: the run's directory.
    max_to_keep: steps kept (older ones are deleted after a save).
    async_save: return from `save` while the write goes on (False: wait for it).
    read_only: restore only: nothing on disk is changed.
    on_corrupt: `fallback` (restore the newest intact step, with a warning) or `error` (stop at a damaged one).
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True, read_only: bool = False,
               on_corrupt: str = "fallback"):
    if on_corrupt not in ON_CORRUPT:
      raise ValueError(f"on_corrupt = {on_corrupt!r}; allowed: {', '.join(ON_CORRUPT)}.")
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.corrupt_directory = os.path.join(os.path.abspath(workdir), "checkpoints_corrupt")
    self._async, self._read_only, self._on_corrupt = async_save, read_only, on_corrupt
    self._sealing: threading.Thread | None = None  # waits for the save in flight, then writes its checksums
    self._seal_error: tuple[int, Exception] | None = None  # the step whose save failed, and why
    self._failed = False  # a failed save was reported (Orbax raises it again on every wait)
    self._problems: dict[int, str | None] = {}  # each step's problem (None: intact), once checked
    self._legacy_reported = False
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else max_to_keep,
        save_interval_steps=0 if read_only else 1,
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=True,
    )
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

  def _seal(self, step: int) -> None:
    """In a thread: waits until Orbax has finished `step` (every process written, renamed into place), then on
    process 0 writes its checksums; the step is complete from then on."""
    try:
      self._manager.wait_until_finished()
      if jax.process_index() == 0:
        integrity.write_checksums(os.path.join(self.directory, str(step)))
    except Exception as e:  # whatever the storage fails with; raised by the next `_wait`, in the caller's thread
      self._seal_error = (step, e)

  def _wait(self) -> None:
    """Waits for the save in flight and its checksums; a failure becomes a `CheckpointError` naming the step."""
    if self._sealing is not None:
      self._sealing.join()
      self._sealing = None
    failed, self._seal_error = self._seal_error, None
    if failed is not None:
      self._fail(*failed)

  def _fail(self, step: int, error: Exception) -> NoReturn:
    self._failed = True
    cause = " ".join(str(error).split())
    kept = ", ".join(str(s) for s in self.all_steps() if s != step) or "none"
    raise CheckpointError(
        f"Could not save checkpoint step {step} to {os.path.join(self.directory, str(step))}: "
        f"{type(error).__name__}: {cause[:500]}. The steps saved before it are intact ({kept}); free space or fix "
        "the permissions, then re-run with the same --workdir to resume from the latest.") from error

  def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> bool:
    """Starts an (asynchronous) save of `state` at `step`, its checksums written once it is on disk; returns
    whether one was started.

    Raises:
      CheckpointError: this save (or the one before it, still in flight) failed.
    """
    self._wait()
    if step in self._manager.all_steps():
      return False
    try:
      started = self._manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(_stored(state)), meta=ocp.args.JsonSave(meta)),
          force=force)
    except Exception as e:  # a directory that cannot be created, ...
      self._fail(step, e)
    if started:
      self._sealing = threading.Thread(target=self._seal, args=(step,), name="checkpoint_checksums", daemon=True)
      self._sealing.start()
    if not self._async:
      self._wait()
    return started

  def all_steps(self) -> list[int]:
    """The steps Orbax has renamed into place, with their checksums or not, intact or not."""
    return list(self._manager.all_steps())

  def _problem(self, step: int) -> str | None:
    if step not in self._problems:
      self._problems[step] = integrity.verify(os.path.join(self.directory, str(step)))
      if self._problems[step] is not None:
        logging.warning("Checkpoint step %d in %s is damaged or incomplete: %s.", step, self.directory,
                        self._problems[step])
    return self._problems[step]

  def _verified(self) -> bool:
    """Whether the steps carry checksums: those of a workdir saved before they existed are restored unverified."""
    steps = self.all_steps()
    legacy = bool(steps) and not any(integrity.has_checksums(os.path.join(self.directory, str(s))) for s in steps)
    if legacy and not self._legacy_reported:
      logging.warning("The checkpoints in %s were saved without checksums (by diffusion_jax before they existed): "
                      "restored unverified.", self.directory)
      self._legacy_reported = True
    return not legacy

  def latest_step(self) -> int | None:
    """The newest step whose files match their checksums, or None if no step was saved.

    Raises:
      CheckpointError: steps exist but none is intact, or the newest is damaged and on_corrupt = 'error'.
    """
    steps = sorted(self.all_steps(), reverse=True)
    if not steps or not self._verified():
      return steps[0] if steps else None
    intact = next((s for s in steps if self._problem(s) is None), None)
    damaged = [s for s in steps if intact is None or s > intact]
    found = "; ".join(f"step {s}: {self._problems[s]}" for s in damaged)
    if intact is None:
      raise CheckpointError(
          f"No checkpoint in {self.directory} is intact ({found}). Nothing was changed: restore the directory from "
          "a copy, or move it aside to start the run over.")
    if damaged and self._on_corrupt == "error":
      raise CheckpointError(
          f"Checkpoint {found} in {self.directory}; training.on_corrupt_checkpoint = 'error' stops here. Step "
          f"{intact} is intact: set training.on_corrupt_checkpoint = 'fallback' to resume from it.")
    if damaged:
      logging.warning("Falling back to step %d, the newest intact checkpoint in %s.", intact, self.directory)
    return intact

  def _set_corrupt_aside(self, newest: int) -> None:
    """Moves every step after `newest` (damaged or incomplete) to `checkpoints_corrupt/` (process 0; every
    process waits for it), so that the run saves those steps anew."""
    later = [s for s in self.all_steps() if s > newest]
    if not later:
      return
    _sync_processes("diffusion_jax: corrupt checkpoints found")  # every process has checked them: none is reading
    if jax.process_index() == 0:
      os.makedirs(self.corrupt_directory, exist_ok=True)
      for s in later:
        target, n = os.path.join(self.corrupt_directory, str(s)), 1
        while os.path.exists(target):
          target, n = os.path.join(self.corrupt_directory, f"{s}.{n}"), n + 1
        shutil.move(os.path.join(self.directory, str(s)), target)
        logging.warning("Moved checkpoint step %d to %s.", s, target)
    _sync_processes("diffusion_jax: corrupt checkpoints set aside")
    self._manager.reload()

  def check_compatible(self, abstract_state: Any, step: int | None = None) -> None:
    """Raises `ValueError` naming the first leaf (in state order) whose shape or dtype differs, or that is missing."""
    step = self.latest_step() if step is None else step
    stored = {_leaf_name(p): v
              for p, v in jax.tree_util.tree_flatten_with_path(self._manager.item_metadata(step)["state"])[0]}
    wanted = [(_leaf_name(p), v) for p, v in jax.tree_util.tree_flatten_with_path(abstract_state)[0]]
    fix = "Use the config the run was started with, or a new --workdir."
    where = f"Checkpoint step {step} in {self.directory} does not match this config"
    for name, want in wanted:
      have = stored.pop(name, None)
      if have is None:
        raise ValueError(f"{where}: parameter {name} of this config is not in the checkpoint. {fix}")
      if tuple(have.shape) != tuple(want.shape) or jax.numpy.dtype(have.dtype) != jax.numpy.dtype(want.dtype):
        raise ValueError(
            f"{where}: parameter {name} has shape {tuple(have.shape)} {jax.numpy.dtype(have.dtype)} in the "
            f"checkpoint but {tuple(want.shape)} {jax.numpy.dtype(want.dtype)} here. {fix}")
    if stored:
      raise ValueError(f"{where}: parameter {next(iter(stored))} of the checkpoint is not in this config. {fix}")

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """The state at `step` (default: the newest intact), placed with the shardings of `abstract_state`.

    Raises:
      CheckpointError: no intact step, or `step` is damaged.
      ValueError: the checkpoint's leaves differ from `abstract_state`'s (`check_compatible`).
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise CheckpointError(f"No complete checkpoint in {self.directory}.")
      if not self._read_only:
        self._set_corrupt_aside(step)
    elif self._verified() and self._problem(step) is not None:
      raise CheckpointError(f"Checkpoint step {step} in {self.directory} is damaged: {self._problems[step]}.")
    self.check_compatible(abstract_state, step)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_stored(abstract_state)), meta=ocp.args.JsonRestore()))
    state = restored["state"]
    return (abstract_state.replace(**state) if dataclasses.is_dataclass(abstract_state) else state), restored["meta"]

  def reached_preemption(self, step: int) -> bool:
    """Whether every process has agreed to stop at `step` after a pre-emption notice (multi-host)."""
    return self._manager.reached_preemption(step)

  def close(self) -> None:
    """Waits for the save in flight and its checksums (raising `CheckpointError` if it failed); closes Orbax."""
    try:
      self._wait()
    finally:
      try:
        self._manager.close()
      except Exception:  # the failed save again, already reported
        if not self._failed:
          raise

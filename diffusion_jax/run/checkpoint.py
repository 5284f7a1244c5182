"""The one module that talks to Orbax: atomic asynchronous checkpoints with automatic resume.

A checkpoint is written to a temporary directory and renamed when complete, so
a process killed mid-write leaves nothing that `latest_step` would restore;
leftover temporary directories are removed when the manager opens. Each
checkpoint holds the `TrainState` (step, params, EMA params, optimizer state:
the step is also the data position) and a small JSON record.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from diffusion_jax.run import logs

# Orbax warns that a read-only manager's directory is read only: our own choice (sample/eval), not a fault.
logs.silence(r"Given directory is read only")


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
  """Saves and restores the training state under `workdir/checkpoints`."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True, read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else max_to_keep,
        save_interval_steps=0 if read_only else 1,
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=async_save,
    )
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> bool:
    """Starts an (asynchronous) save of `state` at `step`; returns whether one was started."""
    if step in self._manager.all_steps():
      return False
    return self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(_stored(state)), meta=ocp.args.JsonSave(meta)),
        force=force)

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
    """The state at `step` (default: latest), placed with the shardings of `abstract_state`."""
    step = self.latest_step() if step is None else step
    self.check_compatible(abstract_state, step)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_stored(abstract_state)), meta=ocp.args.JsonRestore()))
    state = restored["state"]
    return (abstract_state.replace(**state) if dataclasses.is_dataclass(abstract_state) else state), restored["meta"]

  def reached_preemption(self, step: int) -> bool:
    """Whether every process has agreed to stop at `step` after a pre-emption notice (multi-host)."""
    return self._manager.reached_preemption(step)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

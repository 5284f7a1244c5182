"""Device mesh, shardings and multi-host start-up for data-parallel training.

One mesh axis, `'data'`, spans every device of every host. Batches are sharded
along it; parameters and optimizer state are replicated. `jax.jit` with these
shardings is what `jax.pmap` itself is built on since JAX 0.9.2; pmap is in
maintenance mode and is not used.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, timeout_s: int = 300, heartbeat_timeout_s: int = 100) -> None:
  """`jax.distributed.initialize` from explicit arguments or the `JAX_COORDINATOR_ADDRESS` environment.

  With neither, nothing happens (one process), except on clusters JAX detects
  itself (TPU pods, SLURM, ...), where `DIFFUSION_JAX_DISTRIBUTED=1` asks for
  auto-detection. Several processes on CPU run without the persistent compilation cache (why:
  `_compile_alike_on_cpu_hosts`).

  Args:
    coordinator_address: `host:port` of process 0.
    num_processes: total number of processes.
    process_id: this process's index.
    timeout_s: how long to wait for the other processes.
    heartbeat_timeout_s: after how long without a heartbeat JAX's coordination service declares a process dead
      and ends the others (also its wait at shut-down).
  """
  given = [coordinator_address, num_processes, process_id]
  if any(v is not None for v in given) and not all(v is not None for v in given):
    raise ValueError(
        "coordinator_address, num_processes and process_id must be given together, got "
        f"{coordinator_address!r}, {num_processes!r}, {process_id!r}.")
  if coordinator_address is not None:
    if not 0 <= process_id < num_processes:
      raise ValueError(f"process_id = {process_id} must be in [0, num_processes = {num_processes}).")
    jax.distributed.initialize(coordinator_address, num_processes, process_id, initialization_timeout=timeout_s,
                               heartbeat_timeout_seconds=heartbeat_timeout_s,
                               shutdown_timeout_seconds=heartbeat_timeout_s)
  elif os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("DIFFUSION_JAX_DISTRIBUTED") == "1":
    jax.distributed.initialize(initialization_timeout=timeout_s, heartbeat_timeout_seconds=heartbeat_timeout_s,
                               shutdown_timeout_seconds=heartbeat_timeout_s)
  else:
    return
  _compile_alike_on_cpu_hosts()


def _compile_alike_on_cpu_hosts() -> None:
  """Several CPU processes: no persistent compilation cache, so that every process compiles each program.

  JAX writes that cache from process 0 only, and on CPU each process's programs have keys of their own, so with
  a cache process 0 loads each program at once while the others compile it (15-20 s for the tiny UNet's train
  step on 2 cores). Gloo, the CPU collectives, gives up on a collective whose peers are more than 30 s apart
  (`Gloo context initialization failed: DEADLINE_EXCEEDED`), which that head start reaches on busy cores.
  Compiling everywhere keeps the processes together. Accelerator collectives (NCCL, TPU ICI) wait longer.
  """
  if jax.process_count() > 1 and jax.default_backend() == "cpu" and jax.config.jax_enable_compilation_cache:
    jax.config.update("jax_enable_compilation_cache", False)
    logging.info("%d CPU processes: the persistent compilation cache is off (process 0 would skip compiling "
                 "while the others compile, and gloo's collectives wait 30 s at most for a peer).",
                 jax.process_count())


def make_mesh() -> Mesh:
  """A 1-D mesh over every device of every host, axis `'data'`."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
  """Shards the batch axis (after `leading_axes` unsharded ones, e.g. steps per call) along `'data'`."""
  return NamedSharding(mesh, P(*([None] * leading_axes), DATA_AXIS))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, leading_axes: int = 0) -> dict[str, jax.Array]:
  """This host's numpy shard of every array -> global `jax.Array`s sharded along `'data'`."""
  sharding = batch_sharding(mesh, leading_axes)

  def one(x: np.ndarray) -> jax.Array:
    shape = list(x.shape)
    shape[leading_axes] *= jax.process_count()
    return jax.make_array_from_process_local_data(sharding, x, tuple(shape))

  return {k: one(v) for k, v in local.items()}


def gather(x: jax.Array) -> np.ndarray:
  """The whole of a (possibly multi-host sharded) array as numpy, on every host."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def host_value(x: Any) -> Any:
  """A fully replicated (or fully addressable) array as numpy on this host."""
  return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array)
                      and a.is_fully_replicated else np.asarray(a), x)

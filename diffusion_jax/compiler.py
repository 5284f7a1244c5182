"""XLA compiler options for the library's compiled programs, per backend.

On the CPU, jaxlib 0.10 hands convolutions, matmuls and reductions to
YNNPACK by default. For the DDPM UNet that is the wrong split: YNNPACK's 3x3
convolutions with 64 channels run at about 0.6x the speed of XLA's own kernels
(95 vs ~155 GFLOP/s forward at 32x32, batch 16, on 2 cores), while its
reductions are 7x faster than XLA's loop emitter on the bias and normalisation
gradients. Keeping YNNPACK for reductions only makes the CPU workload's train
step ~15-20% and its forward pass ~20-30% faster (BENCHMARKS.md). The
option is passed per program (`jax.jit(..., compiler_options=...)`), so it
changes nothing else in the process; an `XLA_FLAGS` setting of the same option
wins.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
from absl import logging

_YNN = "xla_cpu_experimental_ynn_fusion_type"
_CPU_OPTIONS = {_YNN: "LIBRARY_FUSION_TYPE_REDUCE"}


@functools.cache
def _accepted() -> bool:
  """Whether this jaxlib compiles a program with the CPU options (the option is experimental)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=_CPU_OPTIONS).lower(np.float32(0)).compile()
  except jax.errors.JaxRuntimeError as e:  # an option or value this jaxlib does not know
    logging.warning("XLA did not accept %s (%s); compiling with its defaults.", _CPU_OPTIONS, e)
    return False
  return True


def compiler_options() -> dict[str, str] | None:
  """The options to pass as `jax.jit(..., compiler_options=...)` for programs on the default backend.

  Returns:
    A new dict of XLA debug options, or None where there is nothing to set: the
    default backend is not the CPU, `XLA_FLAGS` already sets the option, or this
    jaxlib does not know it.
  """
  if jax.default_backend() != "cpu" or _YNN in os.environ.get("XLA_FLAGS", "") or not _accepted():
    return None
  return dict(_CPU_OPTIONS)

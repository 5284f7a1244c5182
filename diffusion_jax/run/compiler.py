"""XLA compiler options for the library's compiled programs, per backend, and `jit` with them.

On the CPU, jaxlib 0.10 hands convolutions, matmuls and reductions to
YNNPACK by default. For the DDPM UNet that is the wrong split: YNNPACK's 3x3
convolutions are slower than XLA's own kernels, while its reductions are much
faster than XLA's loop emitter on the bias and normalisation gradients.
`CPU_OPTIONS` keeps YNNPACK for reductions only (measurements: BENCHMARKS.md).
On a CPU with AMX (Intel Xeon since Sapphire Rapids), YNNPACK also takes the
matmuls (`AMX_CPU_OPTIONS`): its bfloat16 dots run on the AMX tiles, 1.1-1.6
TFLOP/s on 2 cores against ~0.28 for XLA's own, which makes the bfloat16 train
step 9% faster and leaves the float32 one as it was. The options are passed per
program (`jax.jit(..., compiler_options=...)`), so they change nothing else in
the process; an `XLA_FLAGS` setting of the same option wins.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
CPU_OPTIONS: Mapping[str, str] = {YNN_FUSION_TYPE: "LIBRARY_FUSION_TYPE_REDUCE"}
AMX_CPU_OPTIONS: Mapping[str, str] = {YNN_FUSION_TYPE: "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def cpu_info() -> dict[str, str]:
  """The first CPU's fields of `/proc/cpuinfo` (`vendor_id`, `model name`, `flags`, ...); empty where it is absent."""
  fields: dict[str, str] = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if not line.strip():
          break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
  except OSError:
    pass
  return fields


def has_amx() -> bool:
  """Whether the CPU has AMX bfloat16 tiles."""
  return "amx_bf16" in cpu_info().get("flags", "").split()


@functools.cache
def _accepted(options: frozenset[tuple[str, str]]) -> bool:
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(np.float32(0)).compile()
  except jax.errors.JaxRuntimeError as e:  # an option or value this jaxlib does not know
    logging.warning("XLA did not accept %s (%s); compiling with its defaults.", dict(options), e)
    return False
  return True


def options_accepted(options: Mapping[str, str]) -> bool:
  """Whether this jaxlib compiles a trivial program with `options` (asked once per set of options).

  Args:
    options: XLA debug options, name -> value.

  Returns:
    False, with a logged warning, for an option or value this jaxlib does not know.
  """
  return _accepted(frozenset(options.items()))


def compiler_options() -> dict[str, str] | None:
  """The options to pass as `jax.jit(..., compiler_options=...)` for programs on the default backend.

  Returns:
    A new dict of XLA debug options, or None where there is nothing to set: the
    default backend is not the CPU, `XLA_FLAGS` already sets the option, or this
    jaxlib does not know it.
  """
  options = AMX_CPU_OPTIONS if has_amx() else CPU_OPTIONS
  if (jax.default_backend() != "cpu" or YNN_FUSION_TYPE in os.environ.get("XLA_FLAGS", "")
      or not options_accepted(options)):
    return None
  return dict(options)


def jit(fn: Callable[..., Any], **kwargs: Any) -> Any:
  """`jax.jit(fn, **kwargs)` with the library's `compiler_options()`: how every program of the library compiles.

  Args:
    fn: the function to compile.
    **kwargs: any other `jax.jit` argument (shardings, donation, static arguments).

  Returns:
    The jitted function.
  """
  return jax.jit(fn, compiler_options=compiler_options(), **kwargs)

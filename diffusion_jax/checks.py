"""Helpers shared by the math and the runtime: argument checks, and the progress hook of compiled loops."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

# A host function that a compiled loop calls (via `jax.debug.callback`) with how many of its steps are done.
ProgressFn = Callable[[jax.Array], None]


def is_int(value: Any) -> bool:
  """Whether `value` is a Python or NumPy integer (and not a bool, which Python counts as one)."""
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def report_progress(progress: ProgressFn | None, done: jax.Array, total: int, times: int = 50) -> None:
  """Calls `progress(done)` from inside a compiled loop about `times` times over `total` iterations.

  Args:
    progress: host function, or None for nothing (no callback is compiled in).
    done: traced int scalar, iterations finished so far (1..total).
    total: static number of iterations.
    times: how many reports at most.
  """
  if progress is None:
    return
  every = max(1, total // times)
  jax.lax.cond((done % every == 0) | (done == total), lambda: jax.debug.callback(progress, done),
               lambda: None)

"""Shared pieces of the benchmark scripts: timing, XLA FLOP counts, the machine's matmul rate, output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from diffusion_jax.run import compiler

# Set from the scripts' --xla_defaults flag: compile with XLA's default options instead of the library's.
XLA_DEFAULTS = False


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
  """`parser.parse_args()` with the shared `--xla_defaults` flag added and applied."""
  parser.add_argument("--xla_defaults", action="store_true",
                      help="compile with XLA's default options instead of diffusion_jax.run.compiler's")
  args = parser.parse_args()
  global XLA_DEFAULTS
  XLA_DEFAULTS = args.xla_defaults
  return args


def jit(fn: Callable[..., Any], **kwargs: Any) -> Any:
  """`jax.jit` with the library's compiler options (`diffusion_jax.run.compiler`), unless `XLA_DEFAULTS`."""
  return jax.jit(fn, **kwargs) if XLA_DEFAULTS else compiler.jit(fn, **kwargs)


def block(x: Any) -> Any:
  return jax.tree.map(lambda a: a.block_until_ready() if isinstance(a, jax.Array) else a, x)


def time_call(fn: Callable[[], Any], *, repeats: int = 5, min_seconds: float = 0.5) -> float:
  """Median seconds of one `fn()` over `repeats` measurements, each averaging >= `min_seconds` of calls."""
  block(fn())  # warm-up (and compile)
  start = time.perf_counter()
  block(fn())
  n = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-9)))
  samples = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(n):
      out = fn()
    block(out)
    samples.append((time.perf_counter() - start) / n)
  return statistics.median(samples)


def compile_seconds_and_flops(jitted: Any, *args: Any) -> tuple[Any, float, float]:
  """(compiled, seconds to lower and compile, FLOPs of one call from XLA's cost analysis)."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return compiled, seconds, float(cost.get("flops", float("nan")))


def peak_bytes(compiled: Any) -> int:
  """Bytes XLA's buffer assignment gives a compiled program: its arguments, outputs and temporaries."""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def matmul_gflops(dtype: jnp.dtype = jnp.float32, n: int = 2048, min_seconds: float = 1.0) -> float:
  """The machine's measured dense matmul rate: GFLOP/s of an n x n x n product (median of 5 timings of
  `min_seconds` each)."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  mm = jax.jit(jnp.matmul)
  seconds = time_call(lambda: mm(a, b), repeats=5, min_seconds=min_seconds)
  return 2 * n**3 / seconds / 1e9


def cpu_info() -> dict[str, Any]:
  """The CPU's vendor and model (`/proc/cpuinfo`) and whether it has AMX bfloat16 tiles."""
  fields = compiler.cpu_info()
  return {"cpu_vendor": fields.get("vendor_id", platform.machine()), "cpu_model": fields.get("model name", ""),
          "amx": compiler.has_amx()}


def cpu_description() -> str:
  """E.g. `Intel(R) Xeon(R) Processor, 2 cores, AMX` for table titles."""
  info = cpu_info()
  return f"{info['cpu_model'] or info['cpu_vendor']}, {os.cpu_count()} cores, {'AMX' if info['amx'] else 'no AMX'}"


def machine() -> dict[str, Any]:
  devices = jax.devices()
  return {
      "platform": devices[0].platform,
      "device_kind": devices[0].device_kind,
      "num_devices": len(devices),
      "cpu_count": os.cpu_count(),
      "processor": platform.processor() or platform.machine(),
      **cpu_info(),
      "jax": jax.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "compiler_options": None if XLA_DEFAULTS else compiler.compiler_options(),
      "date": time.strftime("%Y-%m-%d"),
  }


def report(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str], path: str | None,
           extra: dict[str, Any] | None = None) -> None:
  """Prints `rows` as a table and writes them, with the machine, as JSON to `path`."""
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in columns]
  print(f"\n{title}")
  print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
  print("  ".join("-" * w for w in widths))
  for r in rows:
    print("  ".join(fmt(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)))
  if path:
    with open(path, "w") as f:
      json.dump({"title": title, "machine": machine(), **(extra or {}), "rows": list(rows)}, f, indent=2)
    print(f"wrote {path}")

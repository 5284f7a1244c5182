"""The accelerator check: the test suite, training, sampling and FID-feature throughput on one machine, one command.

    bash benchmarks/device/check.sh              # on the GPU machine: installs .whl/, then runs this
    bash benchmarks/device/check.sh --dry-run    # anywhere: every stage at toy size on the CPU
    python benchmarks/device/check.py [--dry-run] [--out DIR] [--tests EXPR] [--limits train_jax=100,...]

Stages, each a subprocess of its own under a time limit (a crash or a hang costs that stage only, and its compile
time and memory are its own), in this order:
- `train_jax`: our jitted train step (Adam, EMA, clipping) on the paper's CIFAR-10 model in bfloat16 and float32 at
  batch 128 and 512: images/s, the step's FLOPs (XLA's cost analysis), MFU against the card's dense peak, XLA's
  buffer bytes and compile seconds; also the measured matmul rate.
- `train_torch`: diffusers' UNet2DModel of the same layout with Adam, eager and `torch.compile`d, bf16 autocast
  and float32, same batches; peak memory from torch's allocator.
- `sample`: 1000-step ancestral sampling of 256 images and 20-step DPM-Solver++ of 10,000, through the library's
  `Sampler` (`--mode sample`'s path), bfloat16 and float32.
- `inception`: FID features (resize to 299, Inception-v3 pool) of 32x32 images.
- `tests`: pytest on this machine's default backend, tests marked `cpu_only` left out (`--tests`: the marker
  expression, default the fast tier); every result is parsed from pytest's log, also when the limit cuts it.

Writes DIR/check.json (every row, the stages' status, the verdicts against issue 29's targets), DIR/check.md (the
same as tables), DIR/tests.log and DIR/stages.log. DIR is --out, else $OUT, else benchmarks/results/device.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
STAGES = ("train_jax", "train_torch", "sample", "inception", "tests")
# Seconds per stage: together 470 s, inside the 8 minutes the check may take with the wheels' install.
LIMITS = {"train_jax": 100, "train_torch": 120, "sample": 90, "inception": 30, "tests": 130}
DRY_LIMITS = dict.fromkeys(STAGES, 150)
# Dense peaks in TFLOP/s of the cards the check is meant for (NVIDIA's data sheets, SXM parts): bfloat16 tensor
# cores, and TF32 for float32 (XLA's default precision for float32 matmuls and convolutions on these cards).
PEAK_TFLOPS = {"H100 PCIe": {"bfloat16": 756.0, "float32": 378.0}, "H100": {"bfloat16": 989.4, "float32": 494.7},
               "H200": {"bfloat16": 989.4, "float32": 494.7}, "A100": {"bfloat16": 312.0, "float32": 156.0}}
STATUS = re.compile(r"\b(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def parse_pytest(log: str) -> dict[str, Any]:
  """Each test's last status in a `pytest -v` log (with or without xdist), counted, with the failed ones named.

  Args:
    log: pytest's output, complete or cut short.

  Returns:
    `{"counts": {status: n}, "failed": [node ids that FAILED or ERRORed], "finished": whether the summary line came}`.
  """
  last: dict[str, str] = {}
  for line in log.splitlines():
    m = STATUS.search(line)
    if not m:
      continue
    words = line.split(" - ")[0].split()
    ids = [w for w in words if "::" in w]
    if ids:
      last[ids[0]] = m.group(1)
  counts: dict[str, int] = {}
  for status in last.values():
    counts[status] = counts.get(status, 0) + 1
  failed = sorted(k for k, v in last.items() if v in ("FAILED", "ERROR"))
  finished = re.search(r"^=+ .*\bin [\d.]+s", log, re.M) is not None
  return {"counts": counts, "failed": failed, "finished": finished}


def peak_flops(device_kind: str, dtype: str, measured_matmul: float | None) -> tuple[float | None, str]:
  """(FLOP/s, where it comes from): the card's data-sheet peak for `dtype`, or the matmul rate measured in the run
  for a device not in `PEAK_TFLOPS` (a CPU: the dry run)."""
  for name, peaks in PEAK_TFLOPS.items():
    if name in device_kind:
      return peaks[dtype] * 1e12, f"{name} data sheet, {'bf16' if dtype == 'bfloat16' else 'TF32'} dense"
  return measured_matmul, "measured matmul rate"


def add_mfu(rows: list[dict[str, Any]], machine: dict[str, Any]) -> None:
  """Sets `mfu` on the training rows: FLOPs per image of our step (XLA's count, the same network for every impl)
  x images/s / the peak of the row's dtype."""
  per_image = {(r["dtype"], r["batch"]): r["flops_per_step"] / r["batch"]
               for r in rows if r["stage"] == "train" and r.get("flops_per_step")}
  for r in rows:
    flops = per_image.get((r.get("dtype"), r.get("batch")))
    if r["stage"] != "train" or flops is None:
      continue
    peak, source = peak_flops(machine.get("device_kind", ""), r["dtype"],
                              machine.get(f"matmul_{r['dtype']}_flops"))
    r["tflops"] = flops * r["images_per_s"] / 1e12
    r["mfu"] = None if not peak else flops * r["images_per_s"] / peak
    r["peak_source"] = source


def _best(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
  found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
  return max(found, key=lambda r: r["images_per_s"]) if found else None


def verdicts(rows: list[dict[str, Any]], tests: dict[str, Any] | None, batches: tuple[int, ...]) -> list[dict]:
  """Issue 29's targets, each measured or not: bfloat16 training >= 1.5x torch eager and >= torch.compile at each
  batch, 1000-step ancestral sampling of 256 images < 5 s, every test passing."""
  out = []
  for batch in batches:
    ours = _best(rows, stage="train", mode="jit", dtype="bfloat16", batch=batch)
    for mode, factor in (("eager", 1.5), ("torch.compile", 1.0)):
      peer = _best(rows, stage="train", mode=mode, dtype="bfloat16", batch=batch)
      ratio = ours["images_per_s"] / peer["images_per_s"] if ours and peer else None
      out.append({"target": f"bf16 training at batch {batch} >= {factor}x torch {mode}", "value": ratio,
                  "holds": None if ratio is None else ratio >= factor})
  anc = [r for r in rows if r["stage"] == "sample" and r["sampler"] == "ancestral" and r["steps"] == 1000]
  fastest = min((r["seconds"] * 256 / r["images"] for r in anc), default=None)
  out.append({"target": "1000-step ancestral sampling of 256 images < 5 s", "value": fastest,
              "holds": None if fastest is None else fastest < 5})
  passed = None if tests is None else tests["finished"] and not tests["failed"]
  out.append({"target": "every test passes", "value": None if tests is None else tests["counts"], "holds": passed})
  return out


def run_stage(args: argparse.Namespace) -> None:
  """One stage, in this process: its rows appended to `args.rows` as JSON lines as they are measured."""
  size = "toy" if args.dry_run else "paper"

  def emit(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)
    with open(args.rows, "a") as f:
      f.write(json.dumps(row) + "\n")

  import workloads
  if args.stage == "train_jax":
    import jax
    import jax.numpy as jnp

    import common
    n, seconds = workloads.SIZES[size]["matmul_n"], 0.05 if args.dry_run else 1.0
    emit({"stage": "machine", "platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
          "devices": jax.device_count(), "jax": jax.__version__, "cpu_count": os.cpu_count(),
          **{f"matmul_{d}_flops": common.matmul_gflops(jnp.dtype(d), n, seconds) * 1e9
             for d in ("bfloat16", "float32")}})
    workloads.jax_train_rows(size, emit)
  elif args.stage == "train_torch":
    workloads.torch_train_rows(size, ["eager", "aot_eager"] if args.dry_run else ["eager", "default"], emit)
  elif args.stage == "sample":
    workloads.sampling_rows(size, emit)
  elif args.stage == "inception":
    workloads.inception_rows(size, emit)


def tests_command(args: argparse.Namespace) -> list[str]:
  """pytest over the suite (the dry run: one small file, in this process) without the `cpu_only` tests."""
  marker = f"({args.tests}) and not cpu_only" if args.tests else "not cpu_only"
  select = ["tests/test_schedules.py", "-n", "0"] if args.dry_run else [
      "-n", str(min(os.cpu_count() or 1, 16)), "--dist", "loadfile"]
  return [sys.executable, "-m", "pytest", "-v", "-rfE", "-p", "no:cacheprovider", "-m", marker, *select]


def run_limited(command: list[str], limit_s: float, log_path: str, header: str) -> tuple[str, float, str]:
  """Runs `command` from the repo root with its output appended to `log_path`: (status, seconds, output)."""
  env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_PYTHON_CLIENT_PREALLOCATE="false",
             PYTHONPATH=os.pathsep.join([ROOT, HERE, os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
  start = time.perf_counter()
  try:
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit_s)
    status, output = ("ok" if proc.returncode == 0 else f"exit {proc.returncode}"), proc.stdout + proc.stderr
  except subprocess.TimeoutExpired as e:
    decode = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
    status, output = f"cut at its {limit_s:.0f} s limit", decode(e.stdout) + decode(e.stderr)
  seconds = time.perf_counter() - start
  with open(log_path, "a") as f:
    f.write(f"===== {header}: {status}, {seconds:.1f} s\n{output}\n")
  return status, seconds, output


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str, Callable[[Any], str]]]) -> str:
  lines = ["| " + " | ".join(title for title, _, _ in columns) + " |", "|" + "---|" * len(columns)]
  for r in rows:
    lines.append("| " + " | ".join("" if r.get(k) is None else fmt(r[k]) for _, k, fmt in columns) + " |")
  return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
  """The report as Markdown tables."""
  m, rows = report["machine"], report["rows"]
  num = lambda v: f"{v:,.4g}" if isinstance(v, float) else str(v)
  gib = lambda v: f"{v / 2**30:.2f}"
  pct = lambda v: f"{100 * v:.1f}%"
  parts = [f"# Accelerator check{' (dry run, toy sizes)' if report['dry_run'] else ''}, {report['date']}",
           f"{m.get('device_kind', '?')} ({m.get('platform', '?')}, {m.get('devices', '?')} device(s)), JAX "
           f"{m.get('jax', '?')}, {m.get('cpu_count', '?')} CPU cores; measured matmul "
           f"{num(m.get('matmul_bfloat16_flops', 0) / 1e12)} TFLOP/s bf16, "
           f"{num(m.get('matmul_float32_flops', 0) / 1e12)} float32.",
           "## Stages", _table(report["stages"], [("stage", "name", str), ("status", "status", str),
                                                  ("seconds", "seconds", num), ("limit s", "limit_s", num)]),
           "## Training (images/s of full optimizer steps; MFU: our step's XLA FLOPs per image x images/s / peak)",
           _table([r for r in rows if r["stage"] == "train"],
                  [("impl", "impl", str), ("mode", "mode", str), ("dtype", "dtype", str), ("batch", "batch", num),
                   ("images/s", "images_per_s", num), ("step s", "step_s", num),
                   ("GFLOP/step", "flops_per_step", lambda v: num(v / 1e9)), ("TFLOP/s", "tflops", num),
                   ("MFU", "mfu", pct), ("peak GiB", "peak_bytes", gib), ("compile s", "compile_s", num)]),
           "## Sampling (library `Sampler`, random parameters of the same model)",
           _table([r for r in rows if r["stage"] == "sample"],
                  [("sampler", "sampler", str), ("steps", "steps", num), ("dtype", "dtype", str),
                   ("images", "images", num), ("batch", "batch", num), ("seconds", "seconds", num),
                   ("images/s", "images_per_s", num), ("compile s", "compile_s", num)]),
           "## FID features (Inception-v3 at 299, from 32x32 uint8)",
           _table([r for r in rows if r["stage"] == "inception"],
                  [("images", "images", num), ("batch", "batch", num), ("images/s", "images_per_s", num),
                   ("GFLOP/image", "flops_per_image", lambda v: num(v / 1e9)), ("peak GiB", "peak_bytes", gib),
                   ("compile s", "compile_s", num)])]
  tests = report.get("tests")
  if tests:
    counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(tests["counts"].items()))
    parts += ["## Tests", f"`{' '.join(tests['command'][2:])}`: {counts or 'none'}"
              f"{'' if tests['finished'] else ' (cut short)'}."]
    parts += [f"- {t}" for t in tests["failed"]]
  parts += ["## Targets (issue 29)", _table(report["verdicts"], [
      ("target", "target", str), ("measured", "value", lambda v: num(v) if not isinstance(v, dict) else
                                  ", ".join(f"{n} {k.lower()}" for k, n in v.items())),
      ("holds", "holds", lambda v: "yes" if v else "no")])]
  return "\n\n".join(parts) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dry-run", action="store_true", help="every stage at toy size (on whatever JAX finds)")
  parser.add_argument("--out", default=None, help="the report's folder (default $OUT, else benchmarks/results/device)")
  parser.add_argument("--tests", default="not slow", help="pytest -m expression of the tests stage ('': all)")
  parser.add_argument("--limits", default="", help="seconds per stage, e.g. train_torch=200,tests=300")
  parser.add_argument("--stages", default=",".join(STAGES), help="which stages, comma-separated")
  parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # internal: run one stage in this process
  parser.add_argument("--rows", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.stage:
    run_stage(args)
    return
  limits = dict(DRY_LIMITS if args.dry_run else LIMITS)
  for item in filter(None, args.limits.split(",")):
    name, _, value = item.partition("=")
    if name not in STAGES:
      raise ValueError(f"--limits names stage {name!r}; the stages are {', '.join(STAGES)}.")
    limits[name] = float(value)
  stages = [s for s in args.stages.split(",") if s]
  for s in stages:
    if s not in STAGES:
      raise ValueError(f"--stages names {s!r}; the stages are {', '.join(STAGES)}.")
  out = args.out or os.environ.get("OUT") or os.path.join(ROOT, "benchmarks", "results", "device")
  os.makedirs(out, exist_ok=True)
  rows_path, log_path = os.path.join(out, "rows.jsonl"), os.path.join(out, "stages.log")
  for path in (rows_path, log_path):
    if os.path.exists(path):
      os.remove(path)
  report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "dry_run": args.dry_run, "stages": [],
                            "tests": None}
  for name in stages:
    if name == "tests":
      command = tests_command(args)
      status, seconds, output = run_limited(command, limits[name], os.path.join(out, "tests.log"), "tests")
      report["tests"] = {"command": command, **parse_pytest(output)}
    else:
      command = [sys.executable, os.path.abspath(__file__), "--stage", name, "--rows", rows_path] + (
          ["--dry-run"] if args.dry_run else [])
      status, seconds, _ = run_limited(command, limits[name], log_path, name)
    report["stages"].append({"name": name, "status": status, "seconds": seconds, "limit_s": limits[name]})
    print(f"{name}: {status} ({seconds:.0f} s)", flush=True)
  rows = []
  if os.path.exists(rows_path):
    with open(rows_path) as f:
      rows = [json.loads(line) for line in f]
    os.remove(rows_path)
  machines = [r for r in rows if r["stage"] == "machine"]
  report["machine"] = machines[0] if machines else {}
  report["rows"] = [r for r in rows if r["stage"] != "machine"]
  add_mfu(report["rows"], report["machine"])
  import workloads
  batches = workloads.SIZES["toy" if args.dry_run else "paper"]["train_batches"]
  report["verdicts"] = verdicts(report["rows"], report["tests"], batches)
  with open(os.path.join(out, "check.json"), "w") as f:
    json.dump(report, f, indent=2)
  text = markdown(report)
  with open(os.path.join(out, "check.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()

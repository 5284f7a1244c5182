"""benchmarks/device/check.sh, the accelerator check: its dry run end to end on this machine, and the pieces that
turn measurements into the report (pytest's log, MFU, issue 29's targets) against hand-worked cases."""

import json
import os
import subprocess
import sys
import time

import pytest

import helpers

sys.path.insert(0, os.path.join(helpers.ROOT, "benchmarks", "device"))
import check  # noqa: E402

XDIST_LOG = """\
============================= test session starts ==============================
created: 2/2 workers
[gw0] [ 20%] PASSED tests/test_a.py::test_one
[gw1] [ 40%] FAILED tests/test_b.py::test_two[x-1]
[gw0] [ 60%] SKIPPED tests/test_a.py::test_three
[gw1] [ 80%] PASSED tests/test_b.py::test_four
[gw1] [ 80%] ERROR tests/test_b.py::test_four
[gw0] [100%] XFAIL tests/test_a.py::test_five
=========================== short test summary info ============================
FAILED tests/test_b.py::test_two[x-1] - AssertionError: PASSED is not FAILED
ERROR tests/test_b.py::test_four - RuntimeError: teardown
========= 1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error in 12.34s ==========
"""


def test_a_pytest_log_gives_each_tests_last_status():
  parsed = check.parse_pytest(XDIST_LOG)
  # test_four passed its call and failed its teardown: an error, counted once.
  assert parsed["counts"] == {"PASSED": 1, "FAILED": 1, "SKIPPED": 1, "ERROR": 1, "XFAIL": 1}
  assert parsed["failed"] == ["tests/test_b.py::test_four", "tests/test_b.py::test_two[x-1]"]
  assert parsed["finished"]


def test_a_log_cut_short_keeps_what_ran_and_says_so():
  plain = "tests/test_a.py::test_one PASSED                [ 50%]\ntests/test_a.py::test_two "
  assert check.parse_pytest(plain) == {"counts": {"PASSED": 1}, "failed": [], "finished": False}


@pytest.mark.parametrize("kind, dtype, peak", [("NVIDIA H100 80GB HBM3", "bfloat16", 989.4e12),
                                               ("NVIDIA H100 PCIe", "bfloat16", 756e12),
                                               ("NVIDIA H200", "float32", 494.7e12)])
def test_mfu_is_our_steps_flops_per_image_over_the_cards_peak(kind, dtype, peak):
  rows = [{"stage": "train", "impl": "diffusion_jax", "dtype": dtype, "batch": 128, "images_per_s": 4000.0,
           "flops_per_step": 128 * 3e10},
          {"stage": "train", "impl": "torch", "dtype": dtype, "batch": 128, "images_per_s": 2000.0}]
  check.add_mfu(rows, {"device_kind": kind})
  assert rows[0]["mfu"] == pytest.approx(4000 * 3e10 / peak)
  assert rows[1]["mfu"] == pytest.approx(2000 * 3e10 / peak)  # the same network's FLOPs per image


def test_a_device_without_a_data_sheet_peak_uses_the_measured_matmul_rate():
  rows = [{"stage": "train", "dtype": "float32", "batch": 4, "images_per_s": 10.0, "flops_per_step": 4e9}]
  check.add_mfu(rows, {"device_kind": "cpu", "matmul_float32_flops": 2e10})
  assert rows[0]["mfu"] == pytest.approx(0.5)
  assert rows[0]["peak_source"] == "measured matmul rate"


def test_the_targets_compare_like_with_like():
  row = lambda impl, mode, dtype, ips: {"stage": "train", "impl": impl, "mode": mode, "dtype": dtype, "batch": 128,
                                        "images_per_s": ips}
  rows = [row("ours", "jit", "bfloat16", 3000.0), row("ours", "jit", "float32", 9000.0),
          row("torch", "eager", "bfloat16", 1900.0), row("torch", "torch.compile", "bfloat16", 3100.0),
          {"stage": "sample", "sampler": "ancestral", "steps": 1000, "images": 512, "seconds": 9.0},
          {"stage": "sample", "sampler": "dpm_solver++", "steps": 20, "images": 256, "seconds": 0.1}]
  tests = {"counts": {"PASSED": 3}, "failed": [], "finished": True}
  got = {v["target"]: (v["value"], v["holds"]) for v in check.verdicts(rows, tests, (128,))}
  assert got["bf16 training at batch 128 >= 1.5x torch eager"] == (pytest.approx(3000 / 1900), True)
  assert got["bf16 training at batch 128 >= 1.0x torch torch.compile"] == (pytest.approx(3000 / 3100), False)
  assert got["1000-step ancestral sampling of 256 images < 5 s"] == (pytest.approx(4.5), True)
  assert got["every test passes"] == ({"PASSED": 3}, True)
  cut = check.verdicts(rows[:1], {**tests, "finished": False}, (128,))
  assert [v["holds"] for v in cut] == [None, None, None, False]  # not measured, and a cut test run is no pass


@pytest.mark.slow
def test_the_dry_run_runs_every_stage_at_toy_size(tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("diffusers")
  start = time.perf_counter()
  proc = subprocess.run(["bash", os.path.join(helpers.ROOT, "benchmarks", "device", "check.sh"), "--dry-run",
                         "--out", str(tmp_path)], env={**helpers.env(), "PYTHON": sys.executable},
                        capture_output=True, text=True, timeout=600)
  seconds = time.perf_counter() - start
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / "check.json").read_text())
  assert [(s["name"], s["status"]) for s in report["stages"]] == [(n, "ok") for n in check.STAGES], (
      (tmp_path / "stages.log").read_text()[-3000:])
  train = [r for r in report["rows"] if r["stage"] == "train"]
  assert {r["mode"] for r in train} == {"jit", "eager", "torch.compile"}
  for r in train:
    assert r["images_per_s"] > 0 and 0 < r["mfu"] and r["batch"] == 4
  ours = next(r for r in train if r["mode"] == "jit")
  assert ours["flops_per_step"] > 0 and ours["peak_bytes"] > 0 and ours["compile_s"] > 0
  samplers = {(r["sampler"], r["steps"], r["images"]) for r in report["rows"] if r["stage"] == "sample"}
  assert samplers == {("ancestral", 1000, 4), ("dpm_solver++", 20, 16)}
  assert [r["images"] for r in report["rows"] if r["stage"] == "inception"] == [4]
  assert report["tests"]["finished"] and report["tests"]["counts"]["PASSED"] > 10 and not report["tests"]["failed"]
  md = (tmp_path / "check.md").read_text()
  for heading in ("## Training", "## Sampling", "## FID features", "## Tests", "## Targets (issue 29)"):
    assert heading in md
  print(f"dry run: {seconds:.0f} s")

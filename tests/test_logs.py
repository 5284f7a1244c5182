"""Progress lines: rate limit, ETA, the compiled-loop callback; silenced notices."""

import logging as py_logging

import jax
import jax.numpy as jnp
from absl import logging

from diffusion_jax.checks import report_progress
from diffusion_jax.run import logs


def _capture(monkeypatch):
  lines = []
  monkeypatch.setattr(logs.logging, "info", lambda fmt, *args: lines.append(fmt % args))
  return lines


def test_progress_reports_at_most_every_interval_and_at_the_end(monkeypatch):
  lines = _capture(monkeypatch)
  clock = [100.0]
  monkeypatch.setattr(logs.time, "time", lambda: clock[0])
  p = logs.Progress(interval_s=5.0)
  p.start("sampling", 100)
  for done in range(1, 101):
    clock[0] += 0.5  # 0.5 s per step: 50 s in all
    p.update(done)
  # A line every 10 steps (5 s), the last at the end.
  assert len(lines) == 10
  assert lines[0] == "sampling: 10/100 steps (10%), 0:00:05 elapsed, ETA 0:00:45"
  assert lines[-1] == "sampling: 100/100 steps (100%), 0:00:50 elapsed, ETA 0:00:00"
  assert all("\r" not in line and "\x1b" not in line for line in lines)


def test_the_eta_leaves_out_the_compilation_before_the_first_report(monkeypatch):
  """A compiled loop's first report comes after its compilation (60 s here); the rate, and so the ETA, is counted
  from that report on: 1 s per step, not (60 + 10) s over the first 10 steps."""
  lines = _capture(monkeypatch)
  clock = [0.0]
  monkeypatch.setattr(logs.time, "time", lambda: clock[0])
  p = logs.Progress(interval_s=0.0)
  p.start("sampling", 100)
  clock[0] = 70.0  # compiled for 60 s, then ran 10 steps
  p.update(10)
  clock[0] = 80.0
  p.update(20)
  assert lines == ["sampling: 10/100 steps (10%), 0:01:10 elapsed, ETA --",
                   "sampling: 20/100 steps (20%), 0:01:20 elapsed, ETA 0:01:20"]


def test_compiled_loop_reports_through_the_callback_with_the_offset(monkeypatch):
  seen = []
  p = logs.Progress(interval_s=0.0)
  monkeypatch.setattr(p, "update", seen.append)
  p.start("chain", 2 * 200)
  p.offset = 200  # the second of two calls

  def body(c, n):
    report_progress(p, n + 1, 200, times=4)
    return c + 1, None

  out, _ = jax.jit(lambda: jax.lax.scan(body, 0, jnp.arange(200)))()
  jax.effects_barrier()
  assert int(out) == 200
  assert seen == [250, 300, 350, 400]  # every 50 steps of 200, offset by 200


def test_fmt_duration():
  assert [logs.fmt_duration(s) for s in (0, 59.9, 61, 3725, -3)] == ["0:00:00", "0:00:59", "0:01:01", "1:02:05",
                                                                     "0:00:00"]


def test_silence_drops_only_matching_absl_records():
  records = []
  handler = py_logging.Handler()
  handler.emit = records.append
  absl_logger = logging.get_absl_logger()
  absl_logger.addHandler(handler)
  try:
    logs.silence(r"^noise from a library \d+$")
    logging.warning("noise from a library 42")
    logging.warning("a warning that matters")
  finally:
    absl_logger.removeHandler(handler)
  assert [r.getMessage() for r in records] == ["a warning that matters"]

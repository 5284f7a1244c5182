"""What a run tells its user: progress lines with an ETA, `metrics.jsonl` and TensorBoard events.

Everything is a plain log line through absl logging (no carriage returns or
terminal control characters), so a redirected log reads like the terminal.
"""

from __future__ import annotations

import json
import logging as py_logging
import os
import re
import threading
import time
from typing import Any

import jax
from absl import logging


def silence(pattern: str) -> None:
  """Drops absl log records whose message matches the regex `pattern`: notices of other libraries that ask
  nothing of the user (the library's own logs and every other warning still pass)."""
  regex = re.compile(pattern)

  class _Drop(py_logging.Filter):
    def filter(self, record: py_logging.LogRecord) -> bool:
      return not regex.search(record.getMessage())

  logging.get_absl_logger().addFilter(_Drop())


def fmt_duration(seconds: float) -> str:
  """`H:MM:SS` of a non-negative number of seconds."""
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
  """`label: 300/1000 steps (30%), 0:00:12 elapsed, ETA 0:00:28`, at most one line every `interval_s`.

  The ETA is the rate since the stretch's first report, so a compilation before it is not counted as work.

  Long-lived, so that a compiled program can call it (`jax.debug.callback`):
  `start` points it at a new stretch of work; calling it with the steps a
  compiled loop has done reports `offset` plus those, where `offset` is what
  earlier calls of the same stretch did.
  """

  def __init__(self, interval_s: float = 5.0):
    self.interval_s = interval_s
    self.offset = 0
    self._lock = threading.Lock()
    self._label, self._unit, self._total = "", "steps", 1
    self._start = self._last = time.time()
    self._anchor: tuple[float, int] | None = None

  def start(self, label: str, total: int, unit: str = "steps") -> None:
    """Begins a stretch of `total` units of work."""
    with self._lock:
      self._label, self._unit, self._total, self.offset = label, unit, max(int(total), 1), 0
      self._start = self._last = time.time()
      self._anchor = None

  def update(self, done: int) -> None:
    """Reports `done` of the stretch's units, if `interval_s` has passed since the last line (or at the end)."""
    with self._lock:
      now = time.time()
      if self._anchor is None:  # the first report comes after the compilation, which the rate leaves out
        self._anchor = (now, done)
      if now - self._last < self.interval_s and done < self._total:
        return
      self._last = now
      t0, done0 = self._anchor
      eta = fmt_duration((now - t0) / (done - done0) * (self._total - done)) if done > done0 else "--"
      logging.info("%s: %d/%d %s (%d%%), %s elapsed, ETA %s", self._label, done, self._total, self._unit,
                   100 * done // self._total, fmt_duration(now - self._start), eta)

  def __call__(self, done: Any) -> None:
    """The host callback of a compiled loop: `done` of its steps are finished."""
    self.update(self.offset + int(done))


class MetricWriter:
  """`metrics.jsonl` and TensorBoard events in the workdir (process 0 only).

  View the events with `tensorboard --logdir WORKDIR/tensorboard` (`pip install -e ".[tensorboard]"`).
  """

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    if self.active:
      from tensorboardX import SummaryWriter
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.active:
      return
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)
    self._tb.flush()

  def close(self) -> None:
    if self.active:
      self._jsonl.close()
      self._tb.close()

"""Lost hosts: a multi-process run ends on every surviving process, naming the lost one, within a bounded time.

Each process beats a counter in the key-value store of JAX's coordination
service (hosted by process 0) every `timeout_s / 10` seconds from a thread of
its own, and reads the others'. A process whose counter has stood still for
`timeout_s` is lost (killed, crashed, or its host gone); collectives with it
would fail or hang, so every other process writes which one was lost and exits
with status `LOST_EXIT_STATUS`. A coordination service that cannot be reached
for `timeout_s` means that process 0 is lost. A process that ends on its own
(done, pre-empted, or an error of its own, which its log reports) marks itself
stopped and is not waited for. JAX's own heartbeat (main.py sets it to
twice `timeout_s`, at least 100 s, so that this watchdog speaks first)
remains as a second bound.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, NoReturn

import jax

LOST_EXIT_STATUS = 3
_PREFIX = "diffusion_jax/heartbeat/"
_STOPPED = "stopped"


def _client() -> Any:
  """JAX's coordination-service client (no public accessor; Orbax reads it the same way)."""
  from jax._src import distributed
  return distributed.global_state.client


class Watchdog:
  """Exits this process, naming the lost one, when another process of the run stops beating; a context manager
  that does nothing with one process.

  Args:
    timeout_s: how long a process may be silent before it counts as lost.
  """

  def __init__(self, timeout_s: float):
    if not timeout_s > 0:
      raise ValueError(f"timeout_s = {timeout_s!r} must be > 0.")
    self.timeout_s = float(timeout_s)
    self._period = self.timeout_s / 10
    self._stop = threading.Event()
    self._stopped_peers: set[int] = set()
    self._thread: threading.Thread | None = None

  def __enter__(self) -> Watchdog:
    if jax.process_count() > 1:
      self._thread = threading.Thread(target=self._watch, name="host_watchdog", daemon=True)
      self._thread.start()
    return self

  def __exit__(self, *exc_info: Any) -> None:
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join()
    try:
      _client().key_value_set(f"{_PREFIX}{jax.process_index()}", _STOPPED, allow_overwrite=True)
    except Exception:  # the coordination service is gone: nobody is left to tell
      pass

  def _lost(self, process: int, why: str) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.write(
        f"HostLost: process {process} of {jax.process_count()} was lost ({why}): killed, crashed, or its host failed. "
        f"Process {jax.process_index()} stops too (exit status {LOST_EXIT_STATUS}) rather than wait for it in a "
        "collective. Every checkpoint completed before is intact: re-run every process with the same --workdir to "
        "resume.\n")
    sys.stderr.flush()
    os._exit(LOST_EXIT_STATUS)  # no clean-up: Python's and JAX's would wait for the lost process

  def _watch(self) -> None:
    me, client = jax.process_index(), _client()
    others = [p for p in range(jax.process_count()) if p != me]
    start = time.monotonic()
    seen: dict[int, tuple[str | None, float]] = {p: (None, start) for p in others}  # last beat, when it changed
    unreachable_since, beat = None, 0
    while not self._stop.wait(self._period):
      beat += 1
      try:
        client.key_value_set(f"{_PREFIX}{me}", str(beat), allow_overwrite=True)
        beats = {key.rsplit("/", 1)[-1]: value for key, value in client.key_value_dir_get(_PREFIX)}
        now, unreachable_since = time.monotonic(), None  # when the beats were read (the calls can be slow)
      except Exception as e:  # the coordination service (on process 0) does not answer
        now = time.monotonic()
        unreachable_since = unreachable_since or now
        if now - unreachable_since >= self.timeout_s:
          self._lost(0, f"its coordination service has not answered for {now - unreachable_since:.0f} s: "
                        f"{' '.join(str(e).split())[:200]}")
        continue
      for p in others:
        value = beats.get(str(p))
        if value == _STOPPED:
          self._stopped_peers.add(p)
        elif value != seen[p][0]:
          seen[p] = (value, now)
        elif now - seen[p][1] >= self.timeout_s:
          self._lost(p, f"no heartbeat for {now - seen[p][1]:.0f} s")

  def wait_for_loss(self) -> None:
    """After a collective failed: waits up to `timeout_s` and a beat for the watchdog to find a lost process (it
    then exits this process); returns early once another process has stopped on its own, or at once with one
    process."""
    deadline = time.monotonic() + self.timeout_s + 2 * self._period
    while self._thread is not None and time.monotonic() < deadline and not self._stopped_peers:
      time.sleep(self._period / 4)

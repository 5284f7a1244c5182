"""The lost-host watchdog between two real processes on 127.0.0.1: a silent process is lost, a slow or a stopped one
is not."""

import subprocess
import sys
import time

import pytest

import helpers
from diffusion_jax.run import hosts

pytestmark = pytest.mark.slow  # real processes

TIMEOUT_S, RUN_S = 3, 9
SCRIPT = f"""
import os, sys, time
import jax
from diffusion_jax.run import hosts, parallel
port, me, scenario = sys.argv[1], int(sys.argv[2]), sys.argv[3]
parallel.initialize_distributed("127.0.0.1:" + port, 2, me, heartbeat_timeout_s=120)
print("persistent compilation cache:", jax.config.jax_enable_compilation_cache, flush=True)
with hosts.Watchdog({TIMEOUT_S}):
  if me == 0:
    time.sleep({RUN_S})
  elif scenario == "killed":  # gone without a word, as kill -9
    time.sleep(1)
    os.kill(os.getpid(), 9)
  elif scenario == "slow":  # alive, its main thread busy for three timeouts
    end = time.time() + {RUN_S} - 1
    while time.time() < end:
      sum(range(10_000))
print("process", me, "ran to the end", flush=True)
"""


def _pair(scenario):
  port = helpers.free_port()
  return [subprocess.Popen([sys.executable, "-c", SCRIPT, str(port), str(i), scenario], env=helpers.env(),
                           cwd=helpers.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for i in range(2)]


def test_a_silent_process_is_named_within_the_timeout_and_a_slow_or_stopped_one_is_not():
  started = time.time()
  pairs = {scenario: _pair(scenario) for scenario in ("killed", "slow", "stopped")}  # side by side
  results = {}
  for scenario, procs in pairs.items():
    try:
      outs = [p.communicate(timeout=120) for p in procs]
    finally:
      for p in procs:
        p.kill()
    results[scenario] = [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]
    (rc0, out0, err0), (rc1, _, err1) = results[scenario]
    if scenario == "killed":
      assert rc0 == hosts.LOST_EXIT_STATUS and rc1 == -9, err0[-2000:]
      assert f"HostLost: process 1 of 2 was lost (no heartbeat for {TIMEOUT_S} s)" in err0
      assert "ran to the end" not in out0
    else:
      assert rc0 == rc1 == 0, err0[-2000:] + err1[-2000:]
      assert "process 0 ran to the end" in out0 and "HostLost" not in err0 + err1
    # The tests' cache (JAX_COMPILATION_CACHE_DIR) is off in CPU processes of a multi-process run: JAX writes it
    # from process 0 only, so process 0 alone would load each program from it and wait on gloo past its 30 s.
    assert "persistent compilation cache: False" in out0, out0
  assert time.time() - started < 60  # the lost process ended its peer early, not at JAX's 120 s heartbeat

"""Faults, done for real: SIGKILL mid-run and mid-write, SIGTERM, non-finite losses, mismatched checkpoints."""

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import chex
import jax
import numpy as np
import pytest

import helpers
from diffusion_jax.run import hosts, train
from diffusion_jax.run.checkpoint import Checkpointer

pytestmark = pytest.mark.slow  # end-to-end runs

# 10-30 steps/s at batch 64 on 2 cores: a checkpoint's asynchronous write (~1-2 s) ends well before the next is due.
STEPS, EVERY = 150, 50
OVERRIDES = [f"--config.training.num_train_steps={STEPS}", f"--config.training.checkpoint_every_steps={EVERY}",
             "--config.training.global_batch_size=64", "--config.training.log_every_steps=1",
             f"--config.training.sample_every_steps={STEPS}"]


# Two processes of two devices (all-reduces through gloo on 127.0.0.1) take 4-5 steps/s: a shorter run.
STEPS_2, EVERY_2 = 60, 20
OVERRIDES_2 = [f"--config.training.num_train_steps={STEPS_2}", f"--config.training.checkpoint_every_steps={EVERY_2}",
               "--config.training.global_batch_size=16", "--config.training.log_every_steps=1",
               f"--config.training.sample_every_steps={STEPS_2}"]


def _config(data_dir, steps=STEPS, every=EVERY, batch=64, **training):
  """The settings of OVERRIDES (or OVERRIDES_2: `steps`, `every`, `batch`), in-process."""
  return helpers.tiny_config(data_dir, **{"num_train_steps": steps, "checkpoint_every_steps": every,
                                          "global_batch_size": batch, "log_every_steps": 1,
                                          "sample_every_steps": steps, **training})


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
  """The run of OVERRIDES without faults, in-process (main.py runs the same `train_and_evaluate`)."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  train.train_and_evaluate(_config(data_dir), workdir)
  return helpers.load_state(_config(data_dir), workdir)


class _Run:
  """main.py in a subprocess whose output is watched line by line."""

  def __init__(self, workdir, data_dir, *flags, overrides=OVERRIDES, devices=1):
    self.steps = int(overrides[0].split("=")[1])
    self.proc = subprocess.Popen(
        helpers.main_command("tiny.py", workdir, f"--config.data.data_dir={data_dir}", *overrides, *flags),
        env=helpers.env(devices), cwd=helpers.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    self.lines = []
    self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
    self._reader.start()

  def wait_for(self, predicate, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
      if predicate():
        return
      if self.proc.poll() is not None:
        raise AssertionError("main.py ended early:\n" + "".join(self.lines[-50:]))
      time.sleep(0.001)
    raise AssertionError("timed out:\n" + "".join(self.lines[-50:]))

  def logged_step(self, step):
    return any(f"step {step}/{self.steps} " in line for line in list(self.lines))

  def finish(self, timeout=120):
    try:
      self.proc.wait(timeout)
    finally:
      self.proc.kill()  # a peer that hangs cannot hang the suite
    self._reader.join(timeout)
    return "".join(self.lines)


HOST_TIMEOUT_S = 10


def _two_processes(workdir, data_dir):
  """Both processes of a run on 127.0.0.1, two CPU devices each."""
  port = helpers.free_port()
  return [_Run(workdir, data_dir, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
               f"--process_id={i}", f"--host_timeout_s={HOST_TIMEOUT_S}", overrides=OVERRIDES_2, devices=2)
          for i in range(2)]


def _saved_step(out):
  return int(re.search(r"SIGTERM: saved step (\d+) and stopping", out).group(1))


def _tmp_checkpoints(workdir):
  d = os.path.join(workdir, "checkpoints")
  return [n for n in os.listdir(d) if "tmp" in n] if os.path.isdir(d) else []


def test_sigkill_between_checkpoints_and_during_a_write_then_resume_is_bitwise_exact(
    data_dir, uninterrupted, tmp_path):
  workdir = str(tmp_path)
  # 1. Killed while the asynchronous write of the first checkpoint is in flight.
  run = _Run(workdir, data_dir)
  run.wait_for(lambda: _tmp_checkpoints(workdir))
  run.proc.send_signal(signal.SIGKILL)
  run.finish()
  assert run.proc.returncode == -signal.SIGKILL
  assert _tmp_checkpoints(workdir), "the kill should have caught a checkpoint mid-write"
  # The partial checkpoint is not a checkpoint.
  assert Checkpointer(workdir, read_only=True).latest_step() is None
  # 2. Re-run, killed between checkpoints: after the first is complete, at a random step before the second.
  kill_at = int(np.random.default_rng(0).integers(EVERY + 15, 2 * EVERY - 5))
  run = _Run(workdir, data_dir)
  run.wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", str(EVERY))) and run.logged_step(kill_at))
  run.proc.send_signal(signal.SIGKILL)
  out = run.finish()
  assert "Resumed" not in out  # nothing complete to resume from the first time
  assert Checkpointer(workdir, read_only=True).latest_step() == EVERY
  # 3. Re-run to the end: identical to the uninterrupted run, bit for bit.
  run = _Run(workdir, data_dir)
  out = run.finish(timeout=300)
  assert run.proc.returncode == 0, out[-3000:]
  assert "Resumed from" in out and f"at step {EVERY}." in out
  assert not _tmp_checkpoints(workdir)
  state = helpers.load_state(_config(data_dir), workdir)
  assert int(state.step) == STEPS
  chex.assert_trees_all_equal(state, uninterrupted)  # params, EMA, optimizer state, step: exact


def test_sigterm_saves_the_current_step_exits_cleanly_and_resumes_there(data_dir, uninterrupted, tmp_path):
  workdir = str(tmp_path)
  run = _Run(workdir, data_dir)
  run.wait_for(lambda: run.logged_step(EVERY + 15))
  run.proc.send_signal(signal.SIGTERM)
  out = run.finish()
  assert run.proc.returncode == 0, out[-3000:]
  saved = Checkpointer(workdir, read_only=True).latest_step()
  assert EVERY + 15 <= saved < STEPS and saved % EVERY and f"SIGTERM: saved step {saved}" in out
  run = _Run(workdir, data_dir)
  out = run.finish(timeout=300)
  assert run.proc.returncode == 0 and f"at step {saved}." in out
  chex.assert_trees_all_equal(helpers.load_state(_config(data_dir), workdir), uninterrupted)


def test_a_bit_flipped_in_the_newest_checkpoint_resumes_from_the_one_before_and_ends_bitwise_equal(
    data_dir, uninterrupted, tmp_path, caplog):
  workdir = str(tmp_path)
  train.train_and_evaluate(_config(data_dir, num_train_steps=2 * EVERY), workdir)
  step_dir = os.path.join(workdir, "checkpoints", str(2 * EVERY))
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs]
  biggest = max(files, key=os.path.getsize)  # the parameters' and optimizer state's array data
  data = bytearray(open(biggest, "rb").read())
  data[len(data) // 3] ^= 0x10
  open(biggest, "wb").write(bytes(data))
  with caplog.at_level("INFO"):
    state = train.train_and_evaluate(_config(data_dir), workdir)
  assert f"{os.path.relpath(biggest, step_dir)} has changed since it was saved (SHA-256 differs)" in caplog.text
  assert f"Resumed from {workdir}/checkpoints at step {EVERY}." in caplog.text and int(state.step) == STEPS
  assert Checkpointer(workdir, read_only=True).all_steps() == [EVERY, 2 * EVERY, STEPS]  # step 100 saved anew
  assert os.listdir(os.path.join(workdir, "checkpoints_corrupt")) == [str(2 * EVERY)]
  chex.assert_trees_all_equal(helpers.load_state(_config(data_dir), workdir), uninterrupted)


def test_a_full_disk_ends_the_run_naming_the_step_and_path_and_the_earlier_checkpoints_restore(data_dir, tmp_path):
  """No space: a write limit on main.py's process (`ulimit -f`; Python ignores SIGXFSZ, so writes past it fail
  with EFBIG, as on a full disk with ENOSPC), below the size of a checkpoint's array data and above the logs'."""
  workdir, limit = str(tmp_path), 80 * 1024
  train.train_and_evaluate(_config(data_dir, num_train_steps=EVERY), workdir)
  step_dir = os.path.join(workdir, "checkpoints", str(EVERY))
  assert max(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(step_dir) for f in fs) > limit
  command = helpers.main_command("tiny.py", workdir, f"--config.data.data_dir={data_dir}", *OVERRIDES)
  proc = subprocess.run(["bash", "-c", f"ulimit -f {limit // 1024} && exec \"$@\"", "bash", *command],
                        env=helpers.env(), cwd=helpers.ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert re.search(rf"^CheckpointError: Could not save checkpoint step {2 * EVERY} to {workdir}/checkpoints/"
                   rf"{2 * EVERY}: .*File too large.* The steps saved before it are intact \({EVERY}\); free space "
                   r"or fix the permissions, then re-run with the same --workdir to resume from the latest.$",
                   proc.stderr, re.M), proc.stderr[-3000:]
  assert Checkpointer(workdir, read_only=True).latest_step() == EVERY
  assert int(helpers.load_state(_config(data_dir), workdir).step) == EVERY


def _all_finite(tree):
  return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree) if np.issubdtype(np.asarray(x).dtype, np.floating))


def test_nonfinite_loss_stops_with_the_step_and_no_nonfinite_checkpoint(data_dir, tmp_path):
  # A learning rate of 1e30 takes parameters to ~1e30 in one Adam step; the next forward pass overflows.
  config = _config(data_dir, learning_rate=1e30, warmup_steps=0, grad_clip_norm=0.0, checkpoint_every_steps=1,
                   num_train_steps=10, log_every_steps=1, sample_every_steps=10)
  with pytest.raises(FloatingPointError, match=r"Non-finite loss or gradient at step 1;"):
    train.train_and_evaluate(config, str(tmp_path))
  ckpt = Checkpointer(str(tmp_path), read_only=True)
  assert ckpt.all_steps() == [1]
  for step in ckpt.all_steps():
    assert _all_finite(helpers.load_state(config, str(tmp_path), step))


def test_nonfinite_updates_can_be_skipped_and_counted(data_dir, tmp_path):
  config = _config(data_dir, learning_rate=1e30, warmup_steps=0, grad_clip_norm=0.0, num_train_steps=10,
                   checkpoint_every_steps=10, log_every_steps=5, sample_every_steps=10, on_nonfinite="skip")
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 10 and int(state.skipped_steps) == 9  # every step after the first overflows
  assert _all_finite(helpers.load_state(config, str(tmp_path)))
  lines = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
  assert lines[-1]["skipped_steps"] == 9


def test_mismatched_checkpoint_names_the_parameter_and_leaves_checkpoints_untouched(data_dir, tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(_config(data_dir, num_train_steps=4, checkpoint_every_steps=4, sample_every_steps=4),
                           workdir)
  before = {os.path.join(r, f): os.path.getmtime(os.path.join(r, f))
            for r, _, fs in os.walk(os.path.join(workdir, "checkpoints")) for f in fs}
  wider = _config(data_dir, num_train_steps=8, checkpoint_every_steps=4)
  wider.model.ch = 16
  with pytest.raises(ValueError, match=r"parameter params/conv_in/bias has shape \(8,\) float32 in the "
                                       r"checkpoint but \(16,\) float32 here"):
    train.train_and_evaluate(wider, workdir)
  after = {os.path.join(r, f): os.path.getmtime(os.path.join(r, f))
           for r, _, fs in os.walk(os.path.join(workdir, "checkpoints")) for f in fs}
  assert before == after


@pytest.fixture(scope="module")
def uninterrupted_two_processes(data_dir, tmp_path_factory):
  """The run of OVERRIDES_2 without faults, by two processes of two devices."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted_two_processes"))
  outputs = [run.finish(timeout=400) for run in _two_processes(workdir, data_dir)]
  assert "on 4 device(s), 2 process(es)" in outputs[0], outputs[0][-3000:]
  return helpers.load_state(_config(data_dir, STEPS_2, EVERY_2, 16), workdir)


def test_two_processes_preempted_by_sigterm_or_losing_one_to_sigkill_resume_bitwise_exactly(
    data_dir, uninterrupted_two_processes, tmp_path):
  """One workdir through every fault of a pod: SIGTERM to both processes, SIGTERM to process 1 only, SIGKILL to
  process 1, then process 1's files deleted from the newest checkpoint. Each re-run resumes where the last left
  off; the last ends bitwise equal to the run without faults (the same 4-device reductions, in the same order).
  On the way: the first stop's parameters equal one device's after the same steps (the data-parallel program over
  two hosts is the one-device program)."""
  workdir = str(tmp_path / "two_processes")
  latest = lambda: Checkpointer(workdir, read_only=True).latest_step()
  # 1. SIGTERM to both: both save the same step and exit 0.
  runs = _two_processes(workdir, data_dir)
  runs[0].wait_for(lambda: runs[0].logged_step(5))
  for run in runs:
    run.proc.send_signal(signal.SIGTERM)
  outputs = [run.finish() for run in runs]
  assert [run.proc.returncode for run in runs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  first = _saved_step(outputs[0])
  assert _saved_step(outputs[1]) == first == latest() and 5 <= first < EVERY_2
  assert "on 4 device(s), 2 process(es)" in outputs[0]
  # The same steps on one device, in-process, labels included: all-reduces sum in another order over the 4 devices
  # of 2 hosts, so float32 tolerance here, not bitwise.
  one_device = train.train_and_evaluate(_config(data_dir, STEPS_2, EVERY_2, 16, num_train_steps=first),
                                        str(tmp_path / "one_device"))
  chex.assert_trees_all_close(helpers.load_state(_config(data_dir, STEPS_2, EVERY_2, 16), workdir),
                              jax.tree.map(np.asarray, one_device), rtol=2e-4, atol=2e-6)
  # 2. Re-run; SIGTERM to process 1 alone (one VM pre-empted): JAX's pre-emption sync stops both at one step.
  runs = _two_processes(workdir, data_dir)
  runs[0].wait_for(lambda: runs[0].logged_step(EVERY_2 + 5))
  runs[1].proc.send_signal(signal.SIGTERM)
  outputs = [run.finish() for run in runs]
  assert [run.proc.returncode for run in runs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  assert all(f"Resumed from {workdir}/checkpoints at step {first}." in out for out in outputs)
  second = _saved_step(outputs[0])
  assert _saved_step(outputs[1]) == second == latest() and EVERY_2 + 5 <= second < 2 * EVERY_2
  # 3. Re-run; SIGKILL to process 1 once step 2 * EVERY_2 is saved: process 0 names it and exits within the bound.
  runs = _two_processes(workdir, data_dir)
  runs[0].wait_for(lambda: os.path.exists(os.path.join(workdir, "checkpoints", str(2 * EVERY_2), "checksums.json"))
                   and runs[0].logged_step(2 * EVERY_2 + 3))
  runs[1].proc.send_signal(signal.SIGKILL)
  killed = time.time()
  out = runs[0].finish(timeout=HOST_TIMEOUT_S + 60)
  assert time.time() - killed < HOST_TIMEOUT_S + 40, out[-3000:]  # the watchdog's beats are slow on busy cores
  assert runs[0].proc.returncode == hosts.LOST_EXIT_STATUS, out[-3000:]
  assert "HostLost: process 1 of 2 was lost (no heartbeat for" in out
  runs[1].finish()
  assert latest() == 2 * EVERY_2
  # 4. Process 1's files gone from that checkpoint: detected, the run falls back to the SIGTERM step before it.
  step_dir = os.path.join(workdir, "checkpoints", str(2 * EVERY_2))
  assert os.path.isdir(os.path.join(step_dir, "state", "ocdbt.process_1"))
  shutil.rmtree(os.path.join(step_dir, "state", "ocdbt.process_1"))
  runs = _two_processes(workdir, data_dir)
  outputs = [run.finish(timeout=400) for run in runs]
  assert [run.proc.returncode for run in runs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  assert f"Checkpoint step {2 * EVERY_2} in {workdir}/checkpoints is damaged or incomplete: state/ocdbt.process_1/" \
      in outputs[0]
  assert all(f"at step {second}." in out for out in outputs)
  chex.assert_trees_all_equal(helpers.load_state(_config(data_dir, STEPS_2, EVERY_2, 16), workdir),
                              uninterrupted_two_processes)

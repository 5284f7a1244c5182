"""Faults, done for real: SIGKILL mid-run and mid-write, SIGTERM, non-finite losses, mismatched checkpoints."""

import json
import os
import signal
import subprocess
import threading
import time

import chex
import jax
import numpy as np
import pytest

import helpers
from diffusion_jax.run import train
from diffusion_jax.run.checkpoint import Checkpointer

pytestmark = pytest.mark.slow  # end-to-end runs

# 10-30 steps/s at batch 64 on 2 cores: a checkpoint's asynchronous write (~1-2 s) ends well before the next is due.
STEPS, EVERY = 150, 50
OVERRIDES = [f"--config.training.num_train_steps={STEPS}", f"--config.training.checkpoint_every_steps={EVERY}",
             "--config.training.global_batch_size=64", "--config.training.log_every_steps=1",
             f"--config.training.sample_every_steps={STEPS}"]


def _config(data_dir, **training):
  """The settings of OVERRIDES, in-process."""
  return helpers.tiny_config(data_dir, **{"num_train_steps": STEPS, "checkpoint_every_steps": EVERY,
                                          "global_batch_size": 64, "log_every_steps": 1,
                                          "sample_every_steps": STEPS, **training})


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
  """The run of OVERRIDES without faults, in-process (main.py runs the same `train_and_evaluate`)."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  train.train_and_evaluate(_config(data_dir), workdir)
  return helpers.load_state(_config(data_dir), workdir)


class _Run:
  """main.py in a subprocess whose output is watched line by line."""

  def __init__(self, workdir, data_dir):
    self.proc = subprocess.Popen(
        helpers.main_command("tiny.py", workdir, f"--config.data.data_dir={data_dir}", *OVERRIDES),
        env=helpers.env(), cwd=helpers.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
    return any(f"step {step}/{STEPS} " in line for line in list(self.lines))

  def finish(self, timeout=120):
    self.proc.wait(timeout)
    self._reader.join(timeout)
    return "".join(self.lines)


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

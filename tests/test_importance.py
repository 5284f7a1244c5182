"""Importance-sampled timesteps: the probabilities and the history against references written here, the bound's
estimate unbiased, and a training run with them resumed after kill -9 and run on 4 devices."""

import collections
import os
import signal
import subprocess

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from diffusion_jax import importance, losses, schedules
from diffusion_jax.run import train
from diffusion_jax.run.checkpoint import Checkpointer


def _history(rows):
  """A LossHistory of per-t lists of losses (oldest first), as `update` keeps them."""
  T = len(rows)
  losses_ = np.zeros((T, importance.HISTORY), np.float32)
  for t, row in enumerate(rows):
    losses_[t, :len(row)] = row
  return importance.LossHistory(jnp.asarray(losses_), jnp.asarray([len(r) for r in rows], jnp.int32))


def test_probabilities_are_uniform_until_every_t_has_its_losses_then_the_root_mean_square():
  rng = np.random.default_rng(0)
  rows = [list(rng.uniform(0.1, 5.0, importance.HISTORY)) for _ in range(20)]
  rms = np.sqrt(np.mean(np.square(rows), axis=1))
  want = (1 - 1e-3) * rms / rms.sum() + 1e-3 / 20  # Nichol & Dhariwal's code keeps 0.1% uniform
  np.testing.assert_allclose(importance.probabilities(_history(rows)), want, rtol=1e-5)
  rows[7] = rows[7][:-1]  # one t short of 10 losses: uniform
  np.testing.assert_allclose(importance.probabilities(_history(rows)), np.full(20, 1 / 20), rtol=1e-6)


def test_update_appends_in_the_batch_order_and_drops_the_oldest():
  """Against deques of length 10 fed example by example (duplicate timesteps in one batch included)."""
  rng = np.random.default_rng(1)
  T = 6
  history, reference = importance.init_history(T), [collections.deque(maxlen=importance.HISTORY) for _ in range(T)]
  update = jax.jit(importance.update)
  for _ in range(15):
    t = rng.integers(0, T, 8)
    values = rng.normal(size=8).astype(np.float32)
    history = update(history, jnp.asarray(t, jnp.int32), jnp.asarray(values))
    for ti, v in zip(t, values):
      reference[ti].append(v)
  for ti in range(T):
    assert int(history.counts[ti]) == len(reference[ti])
    np.testing.assert_array_equal(np.asarray(history.losses[ti, :len(reference[ti])]), list(reference[ti]))


def test_the_importance_sampled_bound_is_unbiased_and_less_noisy():
  """The L_vlb estimate mean_b L_{t_b} / (T p_{t_b}) over t ~ p: its mean over many draws equals the uniform
  estimate's expectation (the mean of L_t) within 4 standard errors, and it spreads less. L_t: every term of the
  bound of a slightly wrong x_0 network on point-mass data (T = 100), with a history of noisy copies of them."""
  betas = schedules.get_beta_schedule("linear", num_diffusion_steps=100)
  schedule = schedules.make_schedule(betas)
  c = jnp.asarray([0.3, -0.7, 0.9])
  x0 = jnp.broadcast_to(jnp.round(c * 127.5) / 127.5, (4, 3))
  bound = losses.variational_bound(schedule, model_fn=lambda x, t: jnp.broadcast_to(c + 0.05, x.shape),
                                   x_start=x0, key=jax.random.key(0), model_mean_type="xstart")
  terms = np.asarray(bound.terms_bpd, np.float64).mean(0)  # L_t, shape (T,)
  rng = np.random.default_rng(2)
  noisy = terms[:, None] * rng.uniform(0.8, 1.2, (100, importance.HISTORY))
  history = _history(list(noisy))
  draws, batch = 4000, 16
  keys = jax.random.split(jax.random.key(3), draws)
  t, w = jax.vmap(lambda k: importance.sample(k, history, batch))(keys)
  estimates = np.mean(terms[np.asarray(t)] * np.asarray(w, np.float64), axis=1)
  uniform = np.mean(terms[rng.integers(0, 100, (draws, batch))], axis=1)
  assert abs(estimates.mean() - terms.mean()) < 4 * estimates.std() / np.sqrt(draws)
  assert abs(uniform.mean() - terms.mean()) < 4 * uniform.std() / np.sqrt(draws)
  assert estimates.std() < 0.5 * uniform.std()  # the point of it


STEPS, EVERY = 150, 50  # the asynchronous write of step 50 (~1-2 s) ends well before step 100
OVERRIDES = [f"--config.training.num_train_steps={STEPS}", f"--config.training.checkpoint_every_steps={EVERY}",
             "--config.training.global_batch_size=64", "--config.training.log_every_steps=1",
             f"--config.training.sample_every_steps={STEPS}", "--config.training.timestep_sampler=importance",
             "--config.diffusion.model_var_type=learned_range"]


def _config(data_dir):
  c = helpers.tiny_config(data_dir, num_train_steps=STEPS, checkpoint_every_steps=EVERY, global_batch_size=64,
                          log_every_steps=1, sample_every_steps=STEPS, timestep_sampler="importance")
  c.diffusion.model_var_type = "learned_range"
  return c


@pytest.fixture(scope="module")
def importance_run(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("importance"))
  train.train_and_evaluate(_config(data_dir), workdir)
  return helpers.load_state(_config(data_dir), workdir)


@pytest.mark.slow
def test_a_run_keeps_its_history_in_the_checkpoint_and_trains_otherwise_than_uniform(data_dir, importance_run,
                                                                                     tmp_path):
  """T = 50 steps of 10 losses fill after 8 steps of 64: every t has its 10 at the end, and the run differs from
  one with uniform t."""
  assert (np.asarray(importance_run.loss_history.counts) == importance.HISTORY).all()
  assert np.isfinite(importance_run.loss_history.losses).all()
  uniform = _config(data_dir)
  uniform.training.timestep_sampler = "uniform"
  state = jax.tree.map(np.asarray, train.train_and_evaluate(uniform, str(tmp_path)))
  assert state.loss_history is None
  assert not np.allclose(jax.tree.leaves(state.params)[0], jax.tree.leaves(importance_run.params)[0])


@pytest.mark.slow
def test_kill_and_resume_is_bitwise(data_dir, importance_run, tmp_path):
  workdir = str(tmp_path / "killed")
  command = helpers.main_command("tiny.py", workdir, f"--config.data.data_dir={data_dir}", *OVERRIDES)
  proc = subprocess.Popen(command, env=helpers.env(), cwd=helpers.ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  done = lambda: os.path.isdir(os.path.join(workdir, "checkpoints", str(EVERY)))
  for line in proc.stdout:  # killed between the checkpoints of steps 50 and 100, once the first is complete
    if done() and any(f"step {s}/{STEPS} " in line for s in range(EVERY + 20, 2 * EVERY - 5)):
      proc.send_signal(signal.SIGKILL)
      break
  proc.wait(timeout=120)
  assert Checkpointer(workdir, read_only=True).latest_step() == EVERY
  resumed = helpers.run_main("tiny.py", workdir, f"--config.data.data_dir={data_dir}", *OVERRIDES)
  assert f"at step {EVERY}." in resumed.stdout + resumed.stderr
  chex.assert_trees_all_equal(helpers.load_state(_config(data_dir), workdir), importance_run)


@pytest.mark.slow
def test_one_and_four_devices_train_the_same(data_dir, tmp_path):
  """24 steps: the history is full after 8, so 16 steps draw t from it. All-reduces sum in another order over 4
  devices: float32 tolerance, not bitwise (over many steps Adam magnifies the rounding of parameters whose
  gradient is ~0, such as the attention keys' biases)."""
  config = _config(data_dir)
  config.training.update(num_train_steps=24, checkpoint_every_steps=24, sample_every_steps=24)
  one = jax.tree.map(np.asarray, train.train_and_evaluate(config, str(tmp_path / "one")))
  assert (one.loss_history.counts == importance.HISTORY).all()
  four = str(tmp_path / "four")
  short = ["--config.training.num_train_steps=24", "--config.training.checkpoint_every_steps=24",
           "--config.training.sample_every_steps=24"]
  helpers.run_main("tiny.py", four, f"--config.data.data_dir={data_dir}", *OVERRIDES, *short, devices=4)
  chex.assert_trees_all_close(helpers.load_state(config, four), one, rtol=2e-4, atol=2e-6)

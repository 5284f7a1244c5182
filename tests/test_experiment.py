"""Building an experiment: the schedule, the label layout, the optimizer's rate and the state, each computed once
from the config and checked against an independent computation; bad values refused before anything compiles."""

import jax
import numpy as np
import pytest

import helpers
import reference as ref
from diffusion_jax.run import config as config_lib
from diffusion_jax.run import experiment


@pytest.fixture(scope="module")
def exp(data_dir):
  return experiment.build(helpers.tiny_config(data_dir))


def test_the_schedule_is_the_float64_process_cast_once(exp):
  betas = ref.linear_betas(50, 1e-4 * 20, 0.02 * 20)  # the paper's endpoints scaled by 1000 / T
  np.testing.assert_allclose(exp.betas, betas, rtol=1e-12)
  assert exp.betas.dtype == np.float64
  abar = ref.alphas_cumprod(betas)
  np.testing.assert_array_equal(exp.schedule.alphas_cumprod, abar.astype(np.float32))
  np.testing.assert_array_equal(exp.schedule.sqrt_one_minus_alphas_cumprod, np.sqrt(1 - abar).astype(np.float32))
  np.testing.assert_array_equal(exp.schedule.timesteps, np.arange(50))


def test_the_label_layout_draws_the_chosen_classes_in_turn(exp, data_dir):
  assert exp.labels.classes == tuple(range(10)) and exp.labels.num_classes == 10
  np.testing.assert_array_equal(exp.labels.labels(23), np.arange(23) % 10)
  c = helpers.tiny_config(data_dir)
  c.sampling.labels = "3,7"
  layout = experiment.build(c).labels
  np.testing.assert_array_equal(layout.labels(5), [3, 7, 3, 7, 3])
  np.testing.assert_array_equal(layout.every_class(12), np.arange(12) % 10)


def test_an_unconditional_model_has_no_label_layout(data_dir):
  c = helpers.tiny_config(data_dir)
  c.model.class_conditional = False
  assert experiment.build(c).labels is None


@pytest.mark.parametrize("key, value, match", [
    ("sampling.labels", "3,12", r"sampling.labels = '3,12' has labels outside \[0, 10\)"),
    ("training.global_batch_size", 0, "training.global_batch_size"),
])
def test_bad_values_are_refused_when_building(data_dir, key, value, match):
  c = helpers.tiny_config(data_dir)
  section, name = key.split(".")
  c[section][name] = value
  with pytest.raises(ValueError, match=match):
    experiment.build(c)


def test_the_learning_rate_warms_up_linearly_then_stays(data_dir):
  c = helpers.tiny_config(data_dir, learning_rate=2e-4, warmup_steps=100)
  lr = experiment.learning_rate_fn(c)
  np.testing.assert_allclose([lr(s) for s in (0, 25, 50, 100, 101, 10_000)],
                             [0.0, 5e-5, 1e-4, 2e-4, 2e-4, 2e-4], rtol=1e-6)


def test_the_cosine_decay_follows_the_warmup_down_to_zero_at_the_last_step(data_dir):
  c = helpers.tiny_config(data_dir, learning_rate=2e-4, warmup_steps=100, num_train_steps=500, lr_decay="cosine")
  lr = experiment.learning_rate_fn(c)
  steps = np.array([0, 50, 100, 200, 300, 450, 500])
  cosine = 2e-4 * (1 + np.cos(np.pi * (steps - 100) / 400)) / 2
  np.testing.assert_allclose([lr(s) for s in steps], np.where(steps < 100, 2e-4 * steps / 100, cosine), atol=1e-10)
  c.training.warmup_steps = 500
  with pytest.raises(ValueError, match=r"training.lr_decay = 'cosine' decays after training.warmup_steps = 500"):
    config_lib.validate_config(c)


def test_the_abstract_state_is_the_shape_of_the_initial_state(exp):
  state = jax.jit(lambda key: experiment.init_state(exp.model, exp.tx, exp.info, key))(jax.random.key(0))
  abstract = experiment.abstract_state(exp)
  shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
  assert shapes(abstract) == shapes(state)
  assert int(state.step) == 0
  jax.tree.map(np.testing.assert_array_equal, state.ema_params, state.params)  # EMA starts at the parameters

"""The train step and every sampler compile once per shape: calling them again with new values (a new batch, new
parameters, a new key) traces nothing, so a long run or a sampling loop never recompiles.

JAX reports every trace of a jitted function as a `/jax/core/compile/jaxpr_trace_duration` event."""

import jax
import numpy as np
import pytest

import helpers
from diffusion_jax.run import data, experiment, parallel, sampler
from diffusion_jax.run.step import make_train_step

_TRACE = "/jax/core/compile/jaxpr_trace_duration"
_traces: list[str] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kwargs: _traces.append(event) if event == _TRACE else None)


def _traces_of(fn) -> int:
  before = len(_traces)
  jax.block_until_ready(fn())
  return len(_traces) - before


@pytest.fixture(scope="module")
def exp(data_dir):
  return experiment.build(helpers.tiny_config(data_dir))


def test_the_train_step_traces_once(exp):
  init = jax.jit(lambda key: experiment.init_state(exp.model, exp.tx, exp.info, key),
                 out_shardings=parallel.replicated(exp.mesh))  # as the loop does: distinct buffers to donate
  state = init(jax.random.key(0))
  step_fn = make_train_step(exp, state)
  batches = data.iterate(data.train_batches(exp.config, exp.info), 0)
  holder = {"state": state}

  def one_step():
    batch = parallel.global_batch(next(batches), exp.mesh, leading_axes=1)
    holder["state"], metrics = step_fn(holder["state"], batch, exp.schedule)
    return metrics

  assert _traces_of(one_step) >= 1
  assert _traces_of(one_step) == 0
  assert _traces_of(one_step) == 0


@pytest.mark.parametrize("name", ["ancestral", "ddim", "dpm_solver++", "unipc"])
def test_each_sampler_traces_once(data_dir, name):
  c = helpers.tiny_config(data_dir)
  c.sampling.sampler, c.sampling.num_steps = name, 5
  exp = experiment.build(c)
  params = experiment.init_state(exp.model, exp.tx, exp.info, jax.random.key(0)).params
  draw = sampler.make_sampler(exp, 8)
  labels = np.arange(8) % 10
  assert _traces_of(lambda: draw(params, jax.random.key(0), labels)) >= 1
  other = jax.tree.map(lambda p: p * 1.5, params)
  assert _traces_of(lambda: draw(other, jax.random.key(1), labels[::-1].copy())) == 0

"""The sample and eval modes' computations against the library functions they stand for, from the raw data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import karras, losses, sampling, schedules, solvers
from diffusion_jax.run import compiler, data, experiment, modes, sampler
from helpers import tiny_config

INFO = data.DatasetInfo("digits", (8, 8, 1), 10, True)


def _params(exp):
  return jax.jit(lambda key: experiment.init_state(exp.model, exp.tx, exp.info, key))(jax.random.key(1)).params


@pytest.mark.slow
def test_a_padded_last_batch_gives_the_bits_per_dim_of_the_real_examples_only(data_dir, tmp_path):
  """297 test digits in batches of 100: the last batch holds 3 padding examples, which must not count. The
  reference reads the split itself and averages the bound of exactly the 297 real digits."""
  c = tiny_config(data_dir)
  c.eval.num_examples = 0  # the whole split
  exp = experiment.build(c, info=INFO)
  params = _params(exp)
  got = modes.evaluate_bpd(exp, params, 0, str(tmp_path))
  source = data.tfds_source("digits", "test", data_dir)
  images = np.stack([np.asarray(source[i]["image"]) for i in range(len(source))])
  labels = np.array([int(source[i]["label"]) for i in range(len(source))])
  assert len(images) == data.DIGITS_TEST_SIZE == 297

  @compiler.jit
  def bound(params, x, labels, key):  # configs/tiny.py is class-conditional: the bound given each label
    return losses.variational_bound(
        exp.schedule, model_fn=experiment.model_fn(exp.model, params, labels=labels), x_start=data.to_model_input(x),
        key=key, timesteps_per_call=c.eval.timesteps_per_call)

  totals, terms = [], []
  for b in range(3):
    real = images[100 * b:100 * (b + 1)]
    padded = np.concatenate([real, np.zeros((100 - len(real), *real.shape[1:]), real.dtype)])
    padded_labels = np.pad(labels[100 * b:100 * (b + 1)], (0, 100 - len(real)))
    vb = bound(params, padded, padded_labels, jax.random.fold_in(jax.random.key(c.seed), b))
    totals.append(np.asarray(vb.total_bpd)[:len(real)])
    terms.append(np.asarray(vb.terms_bpd)[:len(real)])
  assert got["num_examples"] == 297
  np.testing.assert_allclose(got["bpd"], np.concatenate(totals).mean(), rtol=1e-6)
  np.testing.assert_allclose(got["terms_bpd"], np.concatenate(terms).mean(0), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("name, spacing", [("ancestral", "linspace"), ("ddim", "trailing"),
                                            ("dpm_solver++", "logsnr"), ("unipc", "quadratic"), ("heun", "karras"),
                                            ("ancestral", None), ("euler", None)])
def test_the_configs_samplers_are_the_library_functions(name, spacing):
  """sampling.sampler, num_steps = 10 of T = 50, spacing and order give exactly `ancestral_sample` on the respaced
  schedule, `ddim_sample` with those steps and eta, `solver_sample` on the solver's table, or `karras_sample` (Heun:
  10 calls, 6 steps); not the full chain. Spacing None is the sampler's documented default (README)."""
  c = tiny_config("/nonexistent")
  c.sampling.update(sampler=name, num_steps=10, eta=0.5, spacing=spacing, order=3)
  spacing = spacing or {"ancestral": "trailing", "euler": "quadratic"}[name]
  exp = experiment.build(c, info=INFO)
  # The UNet's last layer starts at zero (eps = 0, a linear flow): perturbed, the orders and steps differ.
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(p.size), p.shape), _params(exp))
  key = jax.random.key(3)
  labels = jnp.arange(8) % 10  # configs/tiny.py is class-conditional; w = 1: the conditional network
  got = sampler.make_sampler(exp, 8)(params, key, labels)
  fn = experiment.model_fn(exp.model, params, labels=labels)
  shape = (8, 8, 8, 1)
  timesteps = schedules.sampling_timesteps(exp.betas, num_steps=6 if name == "heun" else 10, spacing=spacing)
  if name == "ddim":
    want = sampling.ddim_sample(exp.schedule, model_fn=fn, shape=shape, key=key, timesteps=timesteps, eta=0.5)
  elif name == "ancestral":
    want = sampling.ancestral_sample(schedules.respace(exp.betas, timesteps=timesteps), model_fn=fn, shape=shape,
                                     key=key, model_var_type=c.diffusion.model_var_type)
  elif name in karras.SAMPLERS:
    want = karras.karras_sample(karras.karras_table(exp.betas, timesteps=timesteps, sampler=name, calls=10 if
                                                    name == "heun" else None), model_fn=fn, shape=shape, key=key)
  else:
    want = solvers.solver_sample(
        solvers.solver_table(exp.betas, timesteps=timesteps, solver=name, order=3), model_fn=fn, shape=shape,
        key=key)
  np.testing.assert_allclose(got, want, atol=2e-4)  # one program vs another: x_0 = (x - sigma eps) / alpha
  full = sampling.ancestral_sample(
      exp.schedule, model_fn=fn, shape=shape, key=key, model_var_type=c.diffusion.model_var_type)
  assert not np.allclose(got, full, atol=1e-2)


def test_the_guidance_table_shows_each_figure_with_its_spread_and_real_datas_row():
  figures = lambda fid, share: {"dataset_fid": fid, "dataset_fid_std": fid / 4, "confident_share": share,
                                "confident_share_std": 0.02}
  table = modes.guidance_table({0.0: figures(3.0, 0.7), 2.0: figures(2.0, 0.8)}, figures(1.6, 0.84))
  assert [line.split() for line in table.splitlines()] == [
      ["w", "dataset_fid", "confident_share"], ["0", "3", "+-", "0.75", "0.7", "+-", "0.02"],
      ["2", "2", "+-", "0.5", "0.8", "+-", "0.02"], ["real", "data", "1.6", "+-", "0.4", "0.84", "+-", "0.02"]]

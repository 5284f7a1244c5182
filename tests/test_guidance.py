"""Classifier-free guidance: its combination, one network call, rescale (Lin et al. 2024) and interval
(Kynkaanniemi et al. 2024), in every sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import guidance, karras, sampling, schedules, solvers

T = 1000
BETAS = schedules.get_beta_schedule("linear", num_diffusion_steps=T)
SCHED = schedules.make_schedule(BETAS)


def _labelled(x, t, y):
  return 0.1 * x + 0.05 * (y.astype(x.dtype) - 1.5)[:, None] * jnp.cos(t.astype(x.dtype) / 10)[:, None]


SOLVER_TABLE = solvers.solver_table(
    BETAS, timesteps=schedules.sampling_timesteps(BETAS, num_steps=20, spacing="logsnr"), solver="unipc")


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "unipc"])
def test_guidance_scales_one_and_zero_are_the_conditional_and_the_null_label_samplers(sampler):
  labels = jnp.array([0, 1, 2, 1])
  key = jax.random.key(0)
  ddim_steps = schedules.sampling_timesteps(BETAS, num_steps=20)
  run = {"ancestral": lambda fn: sampling.ancestral_sample(SCHED, model_fn=fn, shape=(4, 3), key=key),
         "ddim": lambda fn: sampling.ddim_sample(SCHED, model_fn=fn, shape=(4, 3), key=key, timesteps=ddim_steps,
                                                 eta=0.5),
         "unipc": lambda fn: solvers.solver_sample(SOLVER_TABLE, model_fn=fn, shape=(4, 3), key=key)}[sampler]
  np.testing.assert_array_equal(run(guidance.classifier_free_guidance(
      _labelled, labels=labels, null_label=3, guidance_scale=1.0)),
                                run(lambda x, t: _labelled(x, t, labels)))
  np.testing.assert_array_equal(run(guidance.classifier_free_guidance(
      _labelled, labels=labels, null_label=3, guidance_scale=0.0)),
                                run(lambda x, t: _labelled(x, t, jnp.full_like(labels, 3))))


def test_guided_output_combines_both_predictions_from_one_call():
  calls = []

  def network(x, t, y):
    calls.append(x.shape[0])
    return jnp.concatenate([_labelled(x, t, y), 0.3 * x + y[:, None]], -1)  # [mean channels, variance channels]

  x, t, labels = jax.random.normal(jax.random.key(0), (4, 3)), jnp.array([5, 9, 40, 2]), jnp.array([0, 1, 2, 1])
  null = jnp.full_like(labels, 3)
  out = guidance.classifier_free_guidance(
      network, labels=labels, null_label=3, guidance_scale=2.5, learned_variance=True)(x, t)
  assert calls == [8]  # one call on the doubled batch
  guidance.classifier_free_guidance(
      network, labels=labels, null_label=3, guidance_scale=1.0, learned_variance=True)(x, t)
  assert calls == [8, 4]  # w = 1: the conditional network alone
  cond, uncond = network(x, t, labels), network(x, t, null)
  np.testing.assert_allclose(out[:, :3], uncond[:, :3] + 2.5 * (cond[:, :3] - uncond[:, :3]), rtol=1e-6)
  np.testing.assert_array_equal(out[:, 3:], cond[:, 3:])  # the variance is the conditional one's
  plain = guidance.classifier_free_guidance(_labelled, labels=labels, null_label=3, guidance_scale=4.0)(x, t)
  np.testing.assert_allclose(plain, _labelled(x, t, null) + 4.0 * (_labelled(x, t, labels) - _labelled(x, t, null)),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="guidance_scale = -1.0 is invalid"):
    guidance.classifier_free_guidance(_labelled, labels=labels, null_label=3, guidance_scale=-1.0)


SAMPLERS = {
    "ancestral": lambda fn, key: sampling.ancestral_sample(SCHED, model_fn=fn, shape=(4, 3), key=key),
    "ddim": lambda fn, key: sampling.ddim_sample(
        SCHED, model_fn=fn, shape=(4, 3), key=key, timesteps=schedules.sampling_timesteps(BETAS, num_steps=20)),
    "unipc": lambda fn, key: solvers.solver_sample(SOLVER_TABLE, model_fn=fn, shape=(4, 3), key=key),
    "heun": lambda fn, key: karras.karras_sample(karras.karras_table(BETAS, timesteps=schedules.sampling_timesteps(
        BETAS, num_steps=8, spacing="karras")), model_fn=fn, shape=(4, 3), key=key),
}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_rescale_zero_and_an_interval_over_every_step_are_plain_guidance(sampler):
  labels = jnp.array([0, 1, 2, 1])
  plain = guidance.classifier_free_guidance(_labelled, labels=labels, null_label=3, guidance_scale=3.0)
  same = guidance.classifier_free_guidance(_labelled, labels=labels, null_label=3, guidance_scale=3.0, rescale=0.0,
                                           interval=(0, T - 1))
  np.testing.assert_array_equal(SAMPLERS[sampler](plain, jax.random.key(0)), SAMPLERS[sampler](same, jax.random.key(0)))
  narrow = guidance.classifier_free_guidance(_labelled, labels=labels, null_label=3, guidance_scale=3.0,
                                             interval=(200, 600))
  assert not np.allclose(SAMPLERS[sampler](plain, jax.random.key(0)), SAMPLERS[sampler](narrow, jax.random.key(0)))


def test_rescale_moves_each_examples_std_to_the_conditional_ones_by_phi():
  """Lin et al. 2024, Algorithm 2, against NumPy: x = phi x_cfg std(cond) / std(x_cfg) + (1 - phi) x_cfg, the
  stds over each example's entries; phi = 1 gives the conditional output's std exactly. The network scales x by
  its label, so the conditional, unconditional and guided outputs all differ in std."""
  net = lambda x, t, y: x * (0.2 + 0.1 * y.astype(x.dtype))[:, None] + jnp.sin(t.astype(x.dtype))[:, None]
  x, t, labels = jax.random.normal(jax.random.key(0), (4, 6)), jnp.array([5, 9, 40, 2]), jnp.array([0, 1, 2, 1])
  cond, uncond = (np.asarray(net(x, t, y), np.float64) for y in (labels, jnp.full_like(labels, 3)))
  cfg = uncond + 4.0 * (cond - uncond)
  for phi in (0.3, 1.0):
    out = guidance.classifier_free_guidance(net, labels=labels, null_label=3, guidance_scale=4.0, rescale=phi)(x, t)
    ratio = cond.std(axis=1, keepdims=True) / cfg.std(axis=1, keepdims=True)
    np.testing.assert_allclose(out, phi * cfg * ratio + (1 - phi) * cfg, rtol=1e-5)
  np.testing.assert_allclose(np.std(out, axis=1), cond.std(axis=1), rtol=1e-5)


def test_the_interval_guides_inside_and_gives_the_conditional_output_outside():
  x, labels = jax.random.normal(jax.random.key(0), (4, 3)), jnp.array([0, 1, 2, 1])
  t = jnp.array([100, 200, 600, 601])
  fn = guidance.classifier_free_guidance(_labelled, labels=labels, null_label=3, guidance_scale=2.0,
                                         interval=(200, 600))
  cond, uncond = _labelled(x, t, labels), _labelled(x, t, jnp.full_like(labels, 3))
  expected = np.where(np.array([False, True, True, False])[:, None], uncond + 2.0 * (cond - uncond), cond)
  np.testing.assert_allclose(fn(x, t), expected, rtol=1e-6)


def test_sigma_timestep_turns_an_edm_sigma_interval_into_steps():
  """Kynkaanniemi et al.'s (0.28, 5.42] on the linear schedule: the steps whose sigma is nearest in log sigma."""
  sig = karras.sigmas(BETAS)
  lo, hi = karras.sigma_timestep(BETAS, sigma=np.array([0.28, 5.42]))
  assert sig[lo - 1] < 0.28 < sig[lo + 1] and sig[hi - 1] < 5.42 < sig[hi + 1]
  np.testing.assert_array_equal(karras.sigma_timestep(BETAS, sigma=sig), np.arange(T))


@pytest.mark.parametrize("kwargs, match", [
    (dict(guidance_scale=2.0, rescale=1.5), "guidance_rescale = 1.5 is invalid"),
    (dict(guidance_scale=2.0, interval=(600, 200)), "guidance_interval"),
    (dict(guidance_scale=2.0, interval=(0.5, 200)), "guidance_interval"),
])
def test_bad_guidance_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    guidance.classifier_free_guidance(_labelled, labels=jnp.array([0, 1]), null_label=3, **kwargs)

"""Euler and Heun on the probability-flow ODE (Karras et al. 2022): the sigma grid, the order of convergence on
Gaussian data against the exact ODE solution, churn, the network calls, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from diffusion_jax import karras, sampling, schedules

T = 1000
BETAS = schedules.get_beta_schedule("linear", num_diffusion_steps=T)
M, S = 0.3, 0.5  # data N(M, S^2)


def test_sigmas_and_the_karras_spacing_follow_edm():
  """sigma_t = sqrt((1 - abar_t) / abar_t) against float64; the karras spacing is EDM's rho = 7 ramp from sigma(T - 1)
  to sigma(0), each step the one nearest in log sigma, strictly decreasing."""
  abar = ref.alphas_cumprod(BETAS)
  sig = karras.sigmas(BETAS)
  np.testing.assert_allclose(sig, np.sqrt((1 - abar) / abar), rtol=1e-12)
  n = 10
  ts = schedules.sampling_timesteps(BETAS, num_steps=n, spacing="karras")
  ramp = (sig[-1] ** (1 / 7) + np.arange(n) / (n - 1) * (sig[0] ** (1 / 7) - sig[-1] ** (1 / 7))) ** 7
  assert ts[0] == T - 1 and ts[-1] == 0 and np.all(np.diff(ts) < 0)
  for t, target in zip(ts, ramp, strict=True):  # no other step is nearer in log sigma
    assert np.abs(np.log(sig[t] / target)) <= np.abs(np.log(sig / target)).min() + 1e-12
  many = schedules.sampling_timesteps(BETAS, num_steps=300, spacing="karras")
  assert len(np.unique(many)) == 300 and np.all(np.diff(many) < 0)


def _gaussian_errors(sampler: str, ns: list[int]) -> list[float]:
  """The error of the state at the last visited sigma against the exact ODE solution, data N(M, S^2), float64, on
  the fine grid of T = 100,000: x^(sigma) = M + (x^(sigma_0) - M) sqrt((S^2 + sigma^2) / (S^2 + sigma_0^2))."""
  big_t = 100_000
  betas = schedules.get_beta_schedule("linear", num_diffusion_steps=big_t)
  errors = []
  with jax.enable_x64(True):
    sched = schedules.make_schedule(betas, dtype=jnp.float64)

    oracle = ref.gaussian_eps(sched, M, S)

    for n in ns:
      ts = schedules.sampling_timesteps(betas, num_steps=n, spacing="karras")
      table = karras.karras_table(betas, timesteps=ts, sampler=sampler, dtype=jnp.float64)
      x_T = jnp.array([[-1.0], [0.0], [1.0]])
      _, traj = karras.karras_sample(table, model_fn=oracle, shape=(3, 1), key=jax.random.key(0),
                                     clip_denoised=False, x_T=x_T, return_every=1)
      sig = karras.sigmas(betas)[ts]
      start = np.asarray(x_T[:, 0]) * np.sqrt(1 + sig[0] ** 2)
      exact = M + (start - M) * np.sqrt((S * S + sig[-1] ** 2) / (S * S + sig[0] ** 2))
      errors.append(np.abs(np.asarray(traj.x_t[-1, :, 0]) * np.sqrt(1 + sig[-1] ** 2) - exact).max()
                    / np.sqrt(1 + sig[-1] ** 2))
  return errors


@pytest.mark.parametrize("sampler, slope_range", [("heun", (-2.6, -1.9)), ("euler", (-1.1, -0.85))])
def test_error_against_the_exact_ode_falls_at_the_samplers_order(sampler, slope_range):
  """Heun is second order (fitted slope -2.28 over 8-64 steps), Euler first order (-0.95)."""
  ns = [8, 16, 32, 64]
  errors = _gaussian_errors(sampler, ns)
  slope = np.polyfit(np.log(ns), np.log(errors), 1)[0]
  assert slope_range[0] < slope < slope_range[1], (errors, slope)


def test_heun_calls_the_network_twice_per_step_but_the_last_and_euler_once():
  """2n - 1 calls for n steps, or a given budget in [n, 2n - 1] (the last steps Euler's); Euler n."""
  calls = []

  def model(x, t):
    jax.debug.callback(lambda t: calls.append(int(t[0])), t)
    return 0.1 * x

  ts = schedules.sampling_timesteps(BETAS, num_steps=6, spacing="karras")
  for sampler, budget, expected in [("heun", None, 11), ("heun", 10, 10), ("heun", 6, 6), ("euler", None, 6)]:
    calls.clear()
    table = karras.karras_table(BETAS, timesteps=ts, sampler=sampler, calls=budget)
    jax.block_until_ready(karras.karras_sample(table, model_fn=model, shape=(2, 3), key=jax.random.key(0)))
    assert len(calls) == expected
    assert calls[0] == ts[0] and calls[-1] == ts[-1]
  with pytest.raises(ValueError, match=r"calls = 12 is invalid for heun on 6 steps; allowed: \[6, 11\]"):
    karras.karras_table(BETAS, timesteps=ts, calls=12)


def test_churn_samples_the_data_law_and_without_churn_the_chain_is_deterministic():
  """EDM's Algorithm 2 on N(M, S^2) with its exact x_0 prediction, S_churn = 40 over sigma in [0.05, 50], 40 steps:
  mean and std of 20,000 samples within 5 standard errors plus 0.01 of discretisation; the noise it adds is
  S_noise sqrt(sigma_hat^2 - sigma^2), gamma = min(S_churn / n, sqrt(2) - 1)."""
  sched = schedules.make_schedule(BETAS)

  oracle = ref.gaussian_eps(sched, M, S)

  ts = schedules.sampling_timesteps(BETAS, num_steps=40, spacing="karras")
  table = karras.karras_table(BETAS, timesteps=ts, churn=40.0, churn_sigma_min=0.05, churn_sigma_max=50.0)
  sig = karras.sigmas(BETAS)[ts]
  gamma = np.where((sig >= 0.05) & (sig <= 50), min(40 / 40, np.sqrt(2) - 1), 0.0)
  np.testing.assert_allclose(table.noise, sig * np.sqrt((1 + gamma) ** 2 - 1), rtol=1e-5)
  n = 20_000
  x = np.asarray(jax.jit(lambda tab, k: karras.karras_sample(tab, model_fn=oracle, shape=(n, 1), key=k,
                                                             clip_denoised=False))(table, jax.random.key(1)))
  assert abs(x.mean() - M) < 5 * S / np.sqrt(n) + 0.01
  assert abs(x.std() - S) < 5 * S / np.sqrt(2 * n) + 0.01
  plain = karras.karras_table(BETAS, timesteps=ts)
  a = karras.karras_sample(plain, model_fn=oracle, shape=(4, 1), key=jax.random.key(1), x_T=jnp.ones((4, 1)))
  b = karras.karras_sample(plain, model_fn=oracle, shape=(4, 1), key=jax.random.key(2), x_T=jnp.ones((4, 1)))
  np.testing.assert_array_equal(a, b)


def test_zero_terminal_snr_and_bad_arguments_are_refused():
  zt = schedules.rescale_zero_terminal_snr(BETAS)
  with pytest.raises(ValueError, match="alpha_bar = 0"):
    karras.karras_table(zt, timesteps=schedules.sampling_timesteps(zt, num_steps=10, spacing="trailing"))
  with pytest.raises(ValueError, match="zero terminal SNR"):
    schedules.sampling_timesteps(zt, num_steps=10, spacing="karras")
  ts = schedules.sampling_timesteps(BETAS, num_steps=10, spacing="karras")
  with pytest.raises(ValueError, match="sampler = 'rk4' is unknown"):
    karras.karras_table(BETAS, timesteps=ts, sampler="rk4")
  with pytest.raises(ValueError, match="churn = -1"):
    karras.karras_table(BETAS, timesteps=ts, churn=-1.0)
  with pytest.raises(ValueError, match="sigma must be positive"):
    karras.sigma_timestep(BETAS, sigma=0.0)


@pytest.mark.parametrize("spacing", ["trailing", "karras"])
def test_euler_is_ddim(spacing):
  """DDIM with eta = 0 is Euler's method on dx^/dsigma (Karras et al. 2022, section 4): the same samples on the same
  steps, a check that the sigma parameterisation, the scaling of the network's input and the
  sigma-to-step mapping agree with the DDPM's."""
  sched = schedules.make_schedule(BETAS)
  model = lambda x, t: jnp.tanh(x) * jnp.cos(t.astype(x.dtype) / 100)[:, None]
  ts = schedules.sampling_timesteps(BETAS, num_steps=12, spacing=spacing)
  x_T = jax.random.normal(jax.random.key(0), (4, 3))
  ddim = sampling.ddim_sample(sched, model_fn=model, shape=(4, 3), key=jax.random.key(1), timesteps=ts, x_T=x_T,
                              clip_denoised=False)
  euler = karras.karras_sample(karras.karras_table(BETAS, timesteps=ts, sampler="euler"), model_fn=model,
                               shape=(4, 3), key=jax.random.key(1), x_T=x_T, clip_denoised=False)
  np.testing.assert_allclose(euler, ddim, rtol=1e-4, atol=1e-4)


def _program(n):
  table = karras.karras_table(BETAS, timesteps=schedules.sampling_timesteps(BETAS, num_steps=n, spacing="karras"),
                              churn=10.0)
  draw = jax.jit(lambda tab, k: karras.karras_sample(tab, model_fn=lambda x, t: jnp.sin(x), shape=(4, 8, 8, 3),
                                                     key=k))
  temp = draw.lower(table, jax.random.key(0)).compile().memory_analysis().temp_size_in_bytes
  jaxpr = jax.make_jaxpr(draw)(table, jax.random.key(0))
  return str(jaxpr).count(" sin "), len(jaxpr.eqns), temp


def test_program_and_memory_do_not_grow_with_the_number_of_steps():
  """The network (its `sin`) traced twice (the step's call and Heun's correction), the same program and scratch
  memory for 10 and 300 steps: the steps are the scan's length and the table's leading axis."""
  assert _program(10) == _program(300)
  assert _program(10)[0] == 2

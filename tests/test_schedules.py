"""Schedules against float64 references written from the formulas."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from diffusion_jax import schedules, solvers

F32_RTOL = ref.F32_RTOL


@pytest.mark.parametrize("T", [1000, 500, 4000])
def test_linear_matches_paper_and_scales_with_T(T):
  betas = schedules.get_beta_schedule("linear", num_diffusion_steps=T)
  assert betas.dtype == np.float64 and betas.shape == (T,)
  scale = 1000 / T
  np.testing.assert_allclose(betas, ref.linear_betas(T, 1e-4 * scale, 0.02 * scale), rtol=1e-14)
  assert betas[0] == pytest.approx(1e-4 * scale, rel=1e-15) and betas[-1] == pytest.approx(0.02 * scale, rel=1e-15)


def test_linear_endpoints_overridable():
  betas = schedules.get_beta_schedule("linear", num_diffusion_steps=10, beta_start=0.1, beta_end=0.2)
  np.testing.assert_allclose(betas, ref.linear_betas(10, 0.1, 0.2), rtol=1e-14)


@pytest.mark.parametrize("T", [1000, 4000])
def test_cosine_matches_nichol_dhariwal(T):
  betas = schedules.get_beta_schedule("cosine", num_diffusion_steps=T)
  np.testing.assert_allclose(betas, ref.cosine_betas(T), rtol=1e-10)
  assert betas.max() == 0.999  # The last step is clipped.
  # alpha_bar follows f(t)/f(0) up to the clipped final step.
  f = lambda u: np.cos((u / T + 0.008) / 1.008 * np.pi / 2) ** 2
  np.testing.assert_allclose(ref.alphas_cumprod(betas)[:-1], f(np.arange(1, T)) / f(0), rtol=1e-10)


def test_other_schedules():
  T = 100
  quad = schedules.get_beta_schedule("quadratic", num_diffusion_steps=T, beta_start=1e-4, beta_end=0.02)
  np.testing.assert_allclose(np.sqrt(quad), ref.linear_betas(T, 1e-2, math.sqrt(0.02)), rtol=1e-13)
  sig = schedules.get_beta_schedule("sigmoid", num_diffusion_steps=T, beta_start=1e-4, beta_end=0.02)
  x = np.linspace(-6, 6, T)
  np.testing.assert_allclose(sig, 1e-4 + (0.02 - 1e-4) / (1 + np.exp(-x)), rtol=1e-13)
  assert np.all(np.diff(sig) > 0)
  const = schedules.get_beta_schedule("constant", num_diffusion_steps=T, beta=0.05)
  np.testing.assert_array_equal(const, np.full(T, 0.05))
  custom = schedules.get_beta_schedule("custom", num_diffusion_steps=3, betas=[0.1, 0.5, 1.0])
  np.testing.assert_array_equal(custom, [0.1, 0.5, 1.0])


@pytest.mark.parametrize("call, match", [
    (lambda: schedules.get_beta_schedule("lnear", num_diffusion_steps=10), "Unknown beta schedule 'lnear'"),
    (lambda: schedules.get_beta_schedule("linear", num_diffusion_steps=0), "num_diffusion_steps"),
    (lambda: schedules.get_beta_schedule("linear", num_diffusion_steps=10.0), "num_diffusion_steps"),
    (lambda: schedules.get_beta_schedule("linear", num_diffusion_steps=10), "entry 5 is 1.1155"),
    (lambda: schedules.get_beta_schedule("linear", num_diffusion_steps=5, beta_start=0.0, beta_end=0.1), r"\(0, 1\]"),
    (lambda: schedules.get_beta_schedule("custom", num_diffusion_steps=2, betas=[0.1, np.nan]), r"\(0, 1\]"),
    (lambda: schedules.get_beta_schedule("custom", num_diffusion_steps=3, betas=[0.1, 0.2]), r"shape"),
    (lambda: schedules.get_beta_schedule("cosine", num_diffusion_steps=10, beta_end=0.1), "beta_end"),
    (lambda: schedules.sampling_timesteps(np.full(10, 0.1), num_steps=11), "num_steps"),
    (lambda: schedules.respace_betas(np.full(10, 0.1), timesteps=[3, 3]), "strictly decreasing"),
    (lambda: schedules.respace_betas(np.full(10, 0.1), timesteps=[0, 5]), "sampling order"),
    (lambda: schedules.respace_betas(np.full(10, 0.1), timesteps=[10, 0]), r"\[0, T = 10\)"),
])
def test_bad_input_raises(call, match):
  with pytest.raises(ValueError, match=match):
    call()


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedule_buffers_match_float64_reference(name):
  T = 1000
  betas = schedules.get_beta_schedule(name, num_diffusion_steps=T)
  s = schedules.make_schedule(betas)
  abar = ref.alphas_cumprod(betas)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  post_var = betas * (1 - abar_prev) / (1 - abar)
  expected = {
      "betas": betas,
      "alphas_cumprod": abar,
      "alphas_cumprod_prev": abar_prev,
      "sqrt_alphas_cumprod": abar**0.5,
      "sqrt_one_minus_alphas_cumprod": (1 - abar) ** 0.5,
      "log_one_minus_alphas_cumprod": np.log(1 - abar),
      "sqrt_recip_alphas_cumprod": abar**-0.5,
      "sqrt_recipm1_alphas_cumprod": (1 / abar - 1) ** 0.5,
      "posterior_variance": post_var,
      "posterior_log_variance_clipped": np.log(np.concatenate([[post_var[1]], post_var[1:]])),
      "posterior_mean_coef1": betas * abar_prev**0.5 / (1 - abar),
      "posterior_mean_coef2": (1 - abar_prev) * (1 - betas) ** 0.5 / (1 - abar),
      "fixed_large_variance": np.concatenate([[post_var[1]], betas[1:]]),
      "fixed_large_log_variance": np.log(np.concatenate([[post_var[1]], betas[1:]])),
  }
  for key, want in expected.items():
    got = getattr(s, key)
    assert got.dtype == jnp.float32 and got.shape == (T,), key
    # Every buffer is the float64 value cast once: float32 rounding only.
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=F32_RTOL, atol=0, err_msg=key)
  np.testing.assert_array_equal(s.timesteps, np.arange(T))


def test_posterior_coefficients_equal_bayes_product_of_gaussians():
  betas = schedules.get_beta_schedule("linear", num_diffusion_steps=1000)
  buf = schedules.schedule_buffers(betas)
  rng = np.random.default_rng(0)
  x0, xt = rng.normal(size=5), rng.normal(size=5)
  for t in [0, 1, 2, 10, 500, 999]:
    mean, var = ref.posterior_by_bayes(betas, x0, xt, t)
    np.testing.assert_allclose(buf["posterior_mean_coef1"][t] * x0 + buf["posterior_mean_coef2"][t] * xt, mean,
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(buf["posterior_variance"][t], var, rtol=1e-10, atol=1e-300)


def test_linspace_timesteps_and_respace():
  betas = schedules.get_beta_schedule("linear", num_diffusion_steps=1000)
  np.testing.assert_array_equal(schedules.sampling_timesteps(betas, num_steps=1), [999])
  kept = schedules.sampling_timesteps(betas, num_steps=50)  # sampling order: decreasing
  assert kept[0] == 999 and kept[-1] == 0 and (np.diff(kept) < 0).all()
  np.testing.assert_array_equal(schedules.sampling_timesteps(betas[:10], num_steps=10), np.arange(9, -1, -1))
  new_betas = schedules.respace_betas(betas, timesteps=kept)
  # The respaced process has exactly the kept alphas_cumprod, its steps in increasing order.
  ascending = kept[::-1]
  np.testing.assert_allclose(ref.alphas_cumprod(new_betas), ref.alphas_cumprod(betas)[ascending], rtol=1e-12)
  s = schedules.respace(betas, timesteps=kept)
  assert s.num_diffusion_steps == 50
  np.testing.assert_array_equal(s.timesteps, ascending)  # step i of the respaced process stands for ascending[i]
  # Respacing onto every step is the identity.
  every = np.arange(999, -1, -1)
  np.testing.assert_allclose(schedules.respace_betas(betas, timesteps=every), betas, rtol=1e-9)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("T, n", [(1000, 10), (1000, 50), (1000, 333), (50, 7), (50, 50)])
def test_uniform_spacings_are_diffusers_conventions(spacing, T, n):
  """linspace, leading (steps_offset 0) and trailing as diffusers' DDIMScheduler.set_timesteps computes them."""
  diffusers = pytest.importorskip("diffusers")
  scheduler = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
  scheduler.set_timesteps(n)
  betas = schedules.get_beta_schedule("linear", num_diffusion_steps=T)
  np.testing.assert_array_equal(
      schedules.sampling_timesteps(betas, num_steps=n, spacing=spacing), scheduler.timesteps.numpy())


def test_trailing_starts_at_T_minus_1_and_every_spacing_is_strictly_decreasing():
  betas = schedules.get_beta_schedule("cosine", num_diffusion_steps=1000)
  for n in [1, 2, 3, 7, 10, 20, 100, 999, 1000]:
    assert schedules.sampling_timesteps(betas, num_steps=n, spacing="trailing")[0] == 999
    for spacing in schedules.SPACINGS:
      ts = schedules.sampling_timesteps(betas, num_steps=n, spacing=spacing)
      assert ts.shape == (n,) and ts.min() >= 0 and ts.max() <= 999 and np.all(np.diff(ts) < 0), (spacing, n)
  for spacing in schedules.SPACINGS:
    np.testing.assert_array_equal(
        schedules.sampling_timesteps(betas, num_steps=1000, spacing=spacing), np.arange(999, -1, -1))


def test_logsnr_spacing_is_uniform_in_log_snr():
  """Each timestep's lambda = log(abar / (1 - abar)) / 2 (float64) is the uniform grid's value to within the
  rounding to an integer t: half the lambda change to the neighbouring step."""
  betas = schedules.get_beta_schedule("linear", num_diffusion_steps=1000)
  abar = ref.alphas_cumprod(betas)
  lam = 0.5 * np.log(abar / (1 - abar))
  ts = schedules.sampling_timesteps(betas, num_steps=20, spacing="logsnr")
  assert ts[0] == 999 and ts[-1] == 0
  target = np.linspace(lam[999], lam[0], 20)
  rounding = 0.5 * np.abs(lam[np.maximum(ts - 1, 0)] - lam[np.minimum(ts + 1, 999)])
  assert np.all(np.abs(lam[ts] - target) <= rounding + 1e-12)
  assert np.ptp(np.diff(target)) < 1e-12


def test_quadratic_spacing():
  betas = schedules.get_beta_schedule("linear", num_diffusion_steps=1000)
  i = np.arange(10)
  np.testing.assert_array_equal(schedules.sampling_timesteps(betas, num_steps=10, spacing="quadratic"),
                                np.round(999 * (i / 9) ** 2)[::-1])
  dense = schedules.sampling_timesteps(betas, num_steps=100, spacing="quadratic")  # collisions near 0 pushed apart
  np.testing.assert_array_equal(dense[-4:], [3, 2, 1, 0])


def _lin_algorithm_1(betas):
  """Lin et al. (2024), Algorithm 1, in float64 as the paper writes it."""
  alphas_bar_sqrt = np.sqrt(np.cumprod(1.0 - betas))
  first, last = alphas_bar_sqrt[0], alphas_bar_sqrt[-1]
  alphas_bar_sqrt = (alphas_bar_sqrt - last) * first / (first - last)
  alphas_bar = alphas_bar_sqrt**2
  return 1.0 - np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_rescale_zero_terminal_snr_is_lin_et_al_algorithm_1(name):
  betas = schedules.get_beta_schedule(name, num_diffusion_steps=1000)
  rescaled = schedules.rescale_zero_terminal_snr(betas)
  np.testing.assert_allclose(rescaled, _lin_algorithm_1(betas), rtol=1e-10, atol=1e-15)
  abar, before = np.cumprod(1.0 - rescaled), np.cumprod(1.0 - betas)
  assert abar[-1] == 0.0 and rescaled[-1] == 1.0  # pure noise at t = T
  np.testing.assert_allclose(abar[0], before[0], rtol=1e-14)  # the first step unchanged
  snr = abar / (1.0 - abar)
  assert (np.diff(snr) < 0).all()  # SNR still falls monotonically
  np.testing.assert_allclose(schedules.rescale_zero_terminal_snr(rescaled), rescaled, rtol=1e-10, atol=1e-15)
  if name == "linear":  # the paper's figure: the linear schedule leaves alpha_bar_T = 4.0e-5
    assert before[-1] == pytest.approx(4.0358e-5, rel=1e-3)


def test_rescale_zero_terminal_snr_equals_diffusers():
  torch = pytest.importorskip("torch")
  ddpm = pytest.importorskip("diffusers.schedulers.scheduling_ddpm")
  betas = schedules.get_beta_schedule("linear", num_diffusion_steps=1000)
  theirs = ddpm.rescale_zero_terminal_snr(torch.tensor(betas, dtype=torch.float64)).numpy()
  np.testing.assert_allclose(schedules.rescale_zero_terminal_snr(betas), theirs, rtol=1e-10, atol=1e-15)


def test_zero_terminal_snr_refuses_what_it_leaves_undefined():
  rescaled = schedules.rescale_zero_terminal_snr(schedules.get_beta_schedule("linear", num_diffusion_steps=100))
  with pytest.raises(ValueError, match=r"'logsnr' is undefined for zero terminal SNR"):
    schedules.sampling_timesteps(rescaled, num_steps=10, spacing="logsnr")
  with pytest.raises(ValueError, match=r"timestep 99 has alpha_bar = 0 \(zero terminal SNR\)"):
    solvers.solver_table(rescaled, timesteps=schedules.sampling_timesteps(rescaled, num_steps=10, spacing="trailing"))
  with pytest.raises(ValueError, match=r"needs T >= 2 steps"):
    schedules.rescale_zero_terminal_snr(np.array([0.5]))

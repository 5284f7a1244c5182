"""Losses and the variational bound against float64 references and the exact entropy of known data."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from diffusion_jax import diffusion, losses, schedules

T = 1000
BETAS = schedules.get_beta_schedule("linear", num_diffusion_steps=T)
SCHED = schedules.make_schedule(BETAS)
LEVELS = jnp.asarray(ref.grid_levels(), jnp.float32)


def test_normal_kl():
  rng = np.random.default_rng(0)
  m1, m2, lv1, lv2 = rng.normal(size=(4, 1000)) * np.array([[1], [1], [3], [3]])
  got = jax.jit(losses.normal_kl)(*(jnp.asarray(a, jnp.float32) for a in (m1, lv1, m2, lv2)))
  want = ref.normal_kl(*(a.astype(np.float32).astype(np.float64) for a in (m1, lv1, m2, lv2)))
  # Terms of size up to exp(6): bound the error by float32 rounding of the largest term.
  scale = 1 + np.abs(lv1) + np.abs(lv2) + np.exp(lv1 - lv2) + (m1 - m2) ** 2 * np.exp(-lv2)
  assert np.all(np.abs(np.asarray(got, np.float64) - want) <= ref.F32_RTOL * scale)
  assert np.all(want >= 0)
  np.testing.assert_allclose(losses.normal_kl(0.3, -1.0, 0.3, -1.0), 0.0, atol=1e-7)


def test_discretized_gaussian_log_likelihood_against_scipy_and_normalised():
  rng = np.random.default_rng(1)
  x = ref.grid_levels()[rng.integers(0, 256, size=2000)]
  x[:20], x[20:40] = -1.0, 1.0
  mean = x + rng.normal(0, 0.2, size=2000)
  log_scale = rng.uniform(np.log(1e-3), np.log(0.5), size=2000)
  got = jax.jit(losses.discretized_gaussian_log_likelihood)(
      jnp.asarray(x, jnp.float32), means=jnp.asarray(mean, jnp.float32), log_scales=jnp.asarray(log_scale, jnp.float32))
  want = ref.discretized_gaussian_logp(x, mean, np.exp(log_scale))
  # float32 inputs: the scaled bin edges carry relative error ~1e-7, so log-probabilities
  # of -L in the tail carry absolute error ~1e-7 * L * 2 (d log Phi(z) / dz ~ -z).
  got = np.asarray(got)
  in_range = want > -700  # float64 probabilities underflow below e^-708; ours stay finite in log space
  assert 0.5 < in_range.mean() < 1  # both regimes are exercised
  np.testing.assert_allclose(got[in_range], want[in_range], rtol=1e-4, atol=1e-4)
  assert np.all(np.isfinite(got)) and np.all(got[~in_range] < -700)
  # Probabilities over the 256 levels sum to 1 for any mean and scale.
  for m, ls in [(0.0, -3.0), (0.97, -5.0), (-1.3, -1.0), (0.5, -7.0)]:
    p = jnp.exp(losses.discretized_gaussian_log_likelihood(LEVELS, means=m, log_scales=ls))
    np.testing.assert_allclose(float(p.sum()), 1.0, rtol=1e-5)


def test_discretized_likelihood_deep_tail_is_finite_and_monotone():
  x = jnp.array([-1.0, -0.5, 0.0, 0.5, 1.0])
  lp = losses.discretized_gaussian_log_likelihood(x, means=-0.9, log_scales=jnp.log(1e-3))
  assert np.all(np.isfinite(lp)) and np.all(np.diff(np.asarray(lp)[1:]) < 0)
  g = jax.grad(lambda m: losses.discretized_gaussian_log_likelihood(x, means=m, log_scales=-6.0).sum())(0.2)
  assert np.isfinite(g)


def test_mse_loss_and_weights():
  rng = np.random.default_rng(2)
  p, y = rng.normal(size=(2, 4, 3, 5))
  t = np.array([0, 3, 3, 9])
  w = np.linspace(0.5, 2.0, 10)
  np.testing.assert_allclose(losses.mse_loss(p, y), ((p - y) ** 2).reshape(4, -1).mean(1), rtol=1e-6)
  np.testing.assert_allclose(
      losses.mse_loss(p, y, t=t, timestep_weights=w), ((p - y) ** 2).reshape(4, -1).mean(1) * w[t], rtol=1e-6)
  with pytest.raises(ValueError, match="shape"):
    losses.mse_loss(p, y[:, :2])


@pytest.mark.parametrize("mean_type", ["eps", "xstart", "v"])
def test_training_losses_targets(mean_type):
  rng = np.random.default_rng(3)
  x0, noise = (jnp.asarray(a, jnp.float32) for a in rng.normal(size=(2, 8, 4, 4, 3)))
  t = jnp.arange(8) * 120
  targets = {"eps": noise, "xstart": x0, "v": diffusion.v_target(SCHED, x_start=x0, t=t, noise=noise)}
  # A model that outputs the target exactly has zero loss; one that is off by 1 everywhere has loss 1.
  perfect = lambda x_t, tt: targets[mean_type]
  out = losses.training_losses(SCHED, model_fn=perfect, x_start=x0, t=t, noise=noise, model_mean_type=mean_type)
  np.testing.assert_allclose(out["loss"], 0.0, atol=1e-10)
  off = lambda x_t, tt: targets[mean_type] + 1.0
  out = jax.jit(
      lambda x0, n: losses.training_losses(
          SCHED, model_fn=off, x_start=x0, t=t, noise=n, model_mean_type=mean_type))(x0, noise)
  np.testing.assert_allclose(out["loss"], 1.0, rtol=1e-5)


def test_the_network_sees_the_closed_form_x_t_and_the_original_timestep():
  """On a respaced schedule (10 of 1000 steps) the model gets x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps, abar
  of the original step, and that step's index, schedule.timesteps[t] (float64 reference)."""
  kept = schedules.sampling_timesteps(BETAS, num_steps=10)[::-1]  # step i of the respaced process stands for kept[i]
  sched = schedules.respace(BETAS, timesteps=kept[::-1])
  rng = np.random.default_rng(5)
  x0, noise = (jnp.asarray(a, jnp.float32) for a in rng.normal(size=(2, 6, 3, 2)))
  t = jnp.array([0, 1, 4, 5, 8, 9])
  seen = {}

  def spy(x_t, tt):
    seen.update(x_t=x_t, t=tt)
    return jnp.zeros_like(x_t)

  losses.training_losses(sched, model_fn=spy, x_start=x0, t=t, noise=noise)
  abar = ref.alphas_cumprod(BETAS)[kept[np.asarray(t)]][:, None, None]
  np.testing.assert_array_equal(seen["t"], kept[np.asarray(t)])
  np.testing.assert_allclose(seen["x_t"], np.sqrt(abar) * np.asarray(x0, np.float64)
                             + np.sqrt(1 - abar) * np.asarray(noise, np.float64), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_hybrid_loss_trains_variance_only_through_vlb():
  rng = np.random.default_rng(4)
  x0 = jnp.asarray(ref.grid_levels()[rng.integers(0, 256, size=(4, 4, 4, 3))], jnp.float32)
  noise = jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
  t = jnp.array([0, 10, 500, 999])

  def loss(theta, part):
    model = lambda x_t, tt: jnp.concatenate([theta[0] * x_t, jnp.tanh(theta[1] * x_t)], -1)
    return losses.training_losses(
        SCHED, model_fn=model, x_start=x0, t=t, noise=noise, model_var_type="learned_range")[part].mean()

  theta = jnp.array([0.3, 0.2])
  g_vlb = jax.grad(loss)(theta, "vlb")
  assert g_vlb[0] == 0.0 and g_vlb[1] != 0.0  # mean is frozen in the bound term
  g_mse = jax.grad(loss)(theta, "mse")
  assert g_mse[0] != 0.0 and g_mse[1] == 0.0


def test_prior_bpd_closed_form():
  x0 = jnp.linspace(-1, 1, 12).reshape(3, 4)
  abar = ref.alphas_cumprod(BETAS)[-1]
  m = np.sqrt(abar) * np.asarray(x0, np.float64)
  want = (0.5 * (-np.log(1 - abar) + (1 - abar) + m**2 - 1)).mean(1) / math.log(2)
  np.testing.assert_allclose(losses.prior_bpd(SCHED, x_start=x0), want, rtol=1e-5)


def _bayes_xstart_model(schedule, log_pmf):
  """E[x_0 | x_t] for data i.i.d. over the 256 levels with pmf exp(log_pmf): the optimal x_0 predictor."""
  def model_fn(x_t, t):
    abar = schedule.alphas_cumprod[t].reshape(-1, *([1] * x_t.ndim))
    logits = log_pmf - (x_t[..., None] - jnp.sqrt(abar) * LEVELS) ** 2 / (2 * (1 - abar))
    return jnp.sum(jax.nn.softmax(logits, -1) * LEVELS, -1)
  return model_fn


@pytest.mark.slow
@pytest.mark.parametrize("var_type, max_gap", [("fixed_large", 0.3), ("fixed_small", 1.0)])
def test_variational_bound_of_optimal_model_is_above_exact_nll(var_type, max_gap):
  """Data: a discretised N(0.1, 0.3^2) pixel, 16 i.i.d. dims. Exact NLL = its entropy, 7.297 bits/dim.

  The bound of any model is >= the entropy (cross-entropy >= entropy); with the
  Bayes-optimal x_0 predictor it is close above. Measured (B = 256):
  fixed_large 7.46 (gap 0.17 bits/dim), fixed_small 8.10 (gap 0.81): fixed
  variances leave the reverse kernels Gaussian while the true ones are
  mixtures, most at small t.
  """
  pmf = ref.discretized_normal_pmf(0.1, 0.3)
  entropy = ref.entropy_bits(pmf)
  rng = np.random.default_rng(5)
  B = 256
  x0 = jnp.asarray(ref.grid_levels()[rng.choice(256, size=(B, 16), p=pmf)], jnp.float32)
  model_fn = _bayes_xstart_model(SCHED, jnp.asarray(np.log(np.maximum(pmf, 1e-300)), jnp.float32))
  bound = jax.jit(lambda x, k: losses.variational_bound(
      SCHED, model_fn=model_fn, x_start=x, key=k, model_mean_type="xstart", model_var_type=var_type,
      timesteps_per_call=10))
  vb = bound(x0, jax.random.key(1))
  total = np.asarray(vb.total_bpd, np.float64)
  assert vb.terms_bpd.shape == (B, T) and vb.xstart_mse.shape == (B, T)
  np.testing.assert_allclose(total, np.asarray(vb.prior_bpd + vb.terms_bpd.sum(1), np.float64), rtol=1e-5)
  se = total.std(ddof=1) / np.sqrt(B)
  gap = total.mean() - entropy
  print(f"{var_type}: bound {total.mean():.4f} bits/dim, exact NLL {entropy:.4f}, gap {gap:.4f} +- {se:.4f}")
  assert gap > -5 * se
  assert gap < max_gap
  assert np.all(np.asarray(vb.terms_bpd) >= -1e-6)  # KL terms and the decoder NLL are non-negative


def test_variational_bound_chunking_is_exact():
  x0 = jnp.asarray(ref.grid_levels()[np.random.default_rng(6).integers(0, 256, size=(3, 5))], jnp.float32)
  sched = schedules.make_schedule(schedules.get_beta_schedule("linear", num_diffusion_steps=20))
  model = lambda x, t: 0.5 * x * (t[:, None] / 20.0)
  run = lambda k: losses.variational_bound(
      sched, model_fn=model, x_start=x0, key=jax.random.key(0), timesteps_per_call=k)
  a, b = run(1), jax.jit(lambda: run(5))()
  np.testing.assert_allclose(a.terms_bpd, b.terms_bpd, rtol=1e-5)
  with pytest.raises(ValueError, match="timesteps_per_call"):
    run(3)


def test_hybrid_loss_bound_term_has_the_t_over_1000_scale():
  """L_hybrid = L_simple + (T / 1000) L_vlb (Nichol & Dhariwal's lambda = 0.001 at T = 4000): at T = 2000
  the bound term is twice the bits/dim of the same output's L_t."""
  T = 2000
  sched = schedules.make_schedule(schedules.get_beta_schedule("cosine", num_diffusion_steps=T))
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.uniform(-1, 1, (6, 4, 4, 2)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
  t = jnp.array([0, 1, 10, 500, 1500, 1999])
  model = lambda x, t: jnp.concatenate([0.5 * x, jnp.tanh(x)], -1)
  terms = losses.training_losses(sched, model_fn=model, x_start=x0, t=t, noise=noise, model_var_type="learned_range")
  x_t = diffusion.q_sample(sched, x_start=x0, t=t, noise=noise)
  bound, _ = losses.vlb_term_bpd(
      sched, model_output=model(x_t, t), x_start=x0, x_t=x_t, t=t, model_var_type="learned_range", clip_denoised=False)
  np.testing.assert_allclose(terms["vlb"], 2.0 * bound, rtol=1e-5)
  np.testing.assert_allclose(terms["loss"], terms["mse"] + terms["vlb"], rtol=1e-6)


@pytest.mark.parametrize("weighting", ["min_snr", "p2"])
def test_loss_weights_weight_the_x0_error_alike_for_every_parameterisation(weighting):
  """w_t |target error|^2 = omega_t |x_0 error|^2 for eps, x_0 and v predictions of one x_t, with the papers'
  omega_t, float64 written here: min(SNR_t, 5) (Hang et al. 2023); P2 (Choi et al. 2022) weights the eps-MSE by
  1 / (1 + SNR_t), so omega_t = SNR_t / (1 + SNR_t)."""
  betas = schedules.get_beta_schedule("linear", num_diffusion_steps=1000)
  abar = np.cumprod(1.0 - betas)[:, None]
  snr = (abar / (1.0 - abar))[:, 0]
  rng = np.random.default_rng(0)
  x0, eps = rng.normal(size=(1000, 16)), rng.normal(size=(1000, 16))
  x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps
  x0_hat = x0 + 0.1 * rng.normal(size=x0.shape)  # a network's x_0, and the eps and v it implies at x_t
  eps_hat = (x_t - np.sqrt(abar) * x0_hat) / np.sqrt(1 - abar)
  v, v_hat = (np.sqrt(abar) * e - np.sqrt(1 - abar) * x for e, x in [(eps, x0), (eps_hat, x0_hat)])
  error = {"eps": ((eps - eps_hat) ** 2).sum(1), "xstart": ((x0 - x0_hat) ** 2).sum(1), "v": ((v - v_hat) ** 2).sum(1)}
  omega = np.minimum(snr, 5.0) if weighting == "min_snr" else snr / (1.0 + snr)
  for mean_type in ["eps", "xstart", "v"]:
    w = losses.loss_weights(betas, weighting=weighting, model_mean_type=mean_type)
    np.testing.assert_allclose(w * error[mean_type], omega * error["xstart"], rtol=1e-8, err_msg=mean_type)
  on_eps = np.minimum(snr, 5.0) / snr if weighting == "min_snr" else 1.0 / (1.0 + snr)
  np.testing.assert_allclose(losses.loss_weights(betas, weighting=weighting, model_mean_type="eps"), on_eps,
                             rtol=1e-12)


def test_loss_weights_uniform_zero_snr_and_bad_arguments():
  betas = schedules.get_beta_schedule("linear", num_diffusion_steps=100)
  np.testing.assert_array_equal(losses.loss_weights(betas, weighting="uniform", model_mean_type="v"), 1.0)
  rescaled = schedules.rescale_zero_terminal_snr(betas)
  for weighting in ["min_snr", "p2"]:
    w = losses.loss_weights(rescaled, weighting=weighting, model_mean_type="v")
    assert w[-1] == 1.0 and np.isfinite(w).all()  # the step of zero SNR keeps weight 1
  gamma = losses.loss_weights(betas, weighting="min_snr", model_mean_type="xstart", min_snr_gamma=2.0)
  np.testing.assert_allclose(gamma.max(), 2.0)
  with pytest.raises(ValueError, match=r"weighting = 'snr' is unknown; allowed: uniform, min_snr, p2"):
    losses.loss_weights(betas, weighting="snr", model_mean_type="eps")
  with pytest.raises(ValueError, match=r"allowed: min_snr_gamma > 0, p2_k > 0, p2_gamma >= 0"):
    losses.loss_weights(betas, weighting="p2", model_mean_type="eps", p2_k=0.0)

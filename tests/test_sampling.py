"""Samplers: exact output laws on Gaussian data, structure of the chain, and transformations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from diffusion_jax import diffusion, guidance, losses, sampling, schedules

T = 1000
BETAS = schedules.get_beta_schedule("linear", num_diffusion_steps=T)
ABAR = ref.alphas_cumprod(BETAS)
SCHED = schedules.make_schedule(BETAS)
N_ROWS, N_DIMS = 1000, 100  # 100k independent scalar samples
N = N_ROWS * N_DIMS


def optimal_eps(m, s):
  """E[eps | x_t] for data N(m, s^2); `t` indexes the original process, as a network's would."""

  def model_fn(x_t, t):
    abar = SCHED.alphas_cumprod[t][:, None]
    return jnp.sqrt(1 - abar) * (x_t - jnp.sqrt(abar) * m) / (abar * s * s + 1 - abar)
  return model_fn


def _moments(x):
  x = np.asarray(x, np.float64).ravel()
  return x.mean(), x.std(ddof=1)


def _assert_moments(x, mu, sd, what):
  """Within 5 standard errors: se(mean) = sd / sqrt(N), se(sd) = sd / sqrt(2 (N - 1))."""
  got_mu, got_sd = _moments(x)
  tol_mu, tol_sd = 5 * sd / np.sqrt(N), 5 * sd / np.sqrt(2 * (N - 1))
  assert abs(got_mu - mu) < tol_mu, f"{what}: mean {got_mu:.5f} vs {mu:.5f} (tol {tol_mu:.5f})"
  assert abs(got_sd - sd) < tol_sd, f"{what}: std {got_sd:.5f} vs {sd:.5f} (tol {tol_sd:.5f})"


M, S = 0.3, 0.5
CASES = {
    # name: (sampler call, exact moments of that sampler, whether it must also hit the data law)
    "ancestral_fixed_small": (
        lambda key: sampling.ancestral_sample(
            SCHED, model_fn=optimal_eps(M, S), shape=(N_ROWS, N_DIMS), key=key, model_var_type="fixed_small",
            clip_denoised=False),
        ref.gaussian_sampler_moments(ABAR, M, S, variance="small"), True),
    "ancestral_fixed_large": (
        lambda key: sampling.ancestral_sample(
            SCHED, model_fn=optimal_eps(M, S), shape=(N_ROWS, N_DIMS), key=key, model_var_type="fixed_large",
            clip_denoised=False),
        ref.gaussian_sampler_moments(ABAR, M, S, variance="large"), True),
    "ddim_eta0": (
        lambda key: sampling.ddim_sample(
            SCHED, model_fn=optimal_eps(M, S), shape=(N_ROWS, N_DIMS), key=key, eta=0.0, clip_denoised=False),
        ref.gaussian_sampler_moments(ABAR, M, S, variance="", eta=0.0), True),
    "ddim_eta1": (
        lambda key: sampling.ddim_sample(
            SCHED, model_fn=optimal_eps(M, S), shape=(N_ROWS, N_DIMS), key=key, eta=1.0, clip_denoised=False),
        ref.gaussian_sampler_moments(ABAR, M, S, variance="", eta=1.0), True),
    "respaced_250_fixed_large": (
        lambda key: sampling.ancestral_sample(
            schedules.respace(
                BETAS, timesteps=schedules.sampling_timesteps(BETAS, num_steps=250)), model_fn=optimal_eps(M, S),
            shape=(N_ROWS, N_DIMS), key=key, model_var_type="fixed_large", clip_denoised=False),
        ref.gaussian_sampler_moments(
            ABAR[schedules.sampling_timesteps(BETAS, num_steps=250)[::-1]], M, S, variance="large"), True),
    # 50 steps: a real discretisation bias (std 0.472 for 0.5), so only the exact law is checked.
    "ddim_50_eta0": (
        lambda key: sampling.ddim_sample(
            SCHED, model_fn=optimal_eps(M, S), shape=(N_ROWS, N_DIMS), key=key, timesteps=schedules.sampling_timesteps(
                BETAS, num_steps=50), eta=0.0,
            clip_denoised=False),
        ref.gaussian_sampler_moments(
            ABAR[schedules.sampling_timesteps(BETAS, num_steps=50)[::-1]], M, S, variance="", eta=0.0), False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gaussian_data_sampling_law(name):
  call, (mu, sd), hits_data = CASES[name]
  x = jax.jit(call)(jax.random.key(7))
  assert x.shape == (N_ROWS, N_DIMS)
  _assert_moments(x, mu, sd, f"{name} vs its exact law")
  if hits_data:
    _assert_moments(x, M, S, f"{name} vs the data")


def test_fixed_large_is_exact_for_standard_normal_data():
  """For N(0, 1) data every x_t is N(0, 1) and sigma_t^2 = beta_t makes each reverse step exact."""
  x = jax.jit(lambda k: sampling.ancestral_sample(
      SCHED, model_fn=optimal_eps(0.0, 1.0), shape=(N_ROWS, N_DIMS), key=k, model_var_type="fixed_large",
      clip_denoised=False))(jax.random.key(3))
  mu, sd = ref.gaussian_sampler_moments(ABAR, 0.0, 1.0, variance="large")
  assert abs(sd - np.sqrt(1 - BETAS[0])) < 1e-12  # the only departure: no noise at t = 0
  _assert_moments(x, 0.0, 1.0, "N(0,1)")


def test_no_noise_at_last_step_and_trajectory():
  model = lambda x, t: 0.1 * x
  shape = (4, 3)
  sched = schedules.make_schedule(schedules.get_beta_schedule("linear", num_diffusion_steps=50))
  x0, traj = jax.jit(lambda k: sampling.ancestral_sample(
      sched, model_fn=model, shape=shape, key=k, return_every=1))(jax.random.key(0))
  np.testing.assert_array_equal(traj.timesteps, np.arange(49, -1, -1))
  # The final sample is exactly the mean at t = 0 from the last saved state.
  t0 = jnp.zeros((4,), jnp.int32)
  last = diffusion.p_mean_variance(sched, model_output=model(traj.x_t[-1], t0), x_t=traj.x_t[-1], t=t0)
  np.testing.assert_allclose(x0, last.mean, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(traj.pred_xstart[-1], last.pred_xstart, rtol=1e-6)
  # Subsampled trajectories are the same chain, and return_every does not change the sample.
  x0_b, traj_b = sampling.ancestral_sample(sched, model_fn=model, shape=shape, key=jax.random.key(0), return_every=7)
  np.testing.assert_array_equal(traj_b.timesteps, np.arange(49, -1, -7))
  np.testing.assert_allclose(traj_b.x_t, traj.x_t[::7], rtol=1e-6)
  np.testing.assert_allclose(x0_b, x0, rtol=1e-6)
  np.testing.assert_allclose(
      sampling.ancestral_sample(sched, model_fn=model, shape=shape, key=jax.random.key(0)), x0, rtol=1e-6)
  # Clipping keeps every x_0 prediction in [-1, 1].
  assert float(jnp.abs(traj.pred_xstart).max()) <= 1.0


def test_ddim_eta0_is_a_function_of_x_T_alone():
  """With eta = 0 two different keys give the same samples from the same x_T; with eta > 0 they do not."""
  model = lambda x, t: 0.2 * x
  x_T = jax.random.normal(jax.random.key(7), (8, 2))
  draw = lambda key, eta: sampling.ddim_sample(
      SCHED, model_fn=model, shape=(8, 2), key=key, timesteps=schedules.sampling_timesteps(
          BETAS, num_steps=20), eta=eta,
      x_T=x_T)
  np.testing.assert_array_equal(draw(jax.random.key(1), 0.0), draw(jax.random.key(2), 0.0))
  assert not np.allclose(draw(jax.random.key(1), 0.5), draw(jax.random.key(2), 0.5))
  assert not np.allclose(draw(jax.random.key(1), 0.0),
                         sampling.ddim_sample(SCHED, model_fn=model, shape=(8, 2), key=jax.random.key(1),
                                              timesteps=schedules.sampling_timesteps(BETAS, num_steps=20)))
  with pytest.raises(ValueError, match="x_T must have the samples' shape"):
    sampling.ddim_sample(SCHED, model_fn=model, shape=(8, 2), key=jax.random.key(1), x_T=x_T[:4])


C = np.array([0.3, -0.7, 0.9])  # the data: every example is this point


def point_mass_model(mean_type, schedule=SCHED):
  """The exact network for data that is always C: its eps, x_0 or v at (x_t, t)."""

  def model_fn(x_t, t):
    abar = schedule.alphas_cumprod[t][:, None]
    eps = (x_t - jnp.sqrt(abar) * C) / jnp.sqrt(1 - abar)
    return {"eps": eps, "xstart": jnp.broadcast_to(C, x_t.shape),
            "v": jnp.sqrt(abar) * eps - jnp.sqrt(1 - abar) * C}[mean_type]
  return model_fn


@pytest.mark.parametrize("mean_type, spacing", [("eps", "linspace"), ("xstart", "linspace"), ("v", "linspace"),
                                                ("eps", "trailing"), ("eps", "logsnr")])
def test_ddim_trajectory_of_point_mass_data_is_the_closed_form(mean_type, spacing):
  """For data at one point C, eta = 0 DDIM keeps eps fixed: x_t = sqrt(abar_t) C + sqrt(1 - abar_t) e at every
  visited t, with e = x_T's own noise, and it ends exactly at C; float64 closed form, every mean type. On the
  trailing spacing (999, 932, 866, ..., 66, then the clean data: gaps of 66 and 67) each next step comes from
  the list, not a stride."""
  visited = schedules.sampling_timesteps(BETAS, num_steps=15, spacing=spacing)
  x_T = jax.random.normal(jax.random.key(3), (5, 3))
  x0, traj = sampling.ddim_sample(
      SCHED, model_fn=point_mass_model(mean_type), shape=(5, 3), key=jax.random.key(0), timesteps=visited,
      model_mean_type=mean_type, clip_denoised=False, return_every=1, x_T=x_T)
  np.testing.assert_array_equal(traj.timesteps, visited)
  abar = ABAR[visited][:, None, None]
  e = (np.asarray(x_T, np.float64) - np.sqrt(abar[0]) * C) / np.sqrt(1 - abar[0])
  np.testing.assert_allclose(traj.x_t, np.sqrt(abar) * C + np.sqrt(1 - abar) * e, atol=1e-5)
  np.testing.assert_allclose(traj.pred_xstart, np.broadcast_to(C, traj.pred_xstart.shape), atol=1e-4)
  np.testing.assert_allclose(x0, np.broadcast_to(C, x0.shape), atol=1e-5)


def _count_traces(T_):
  count = [0]

  def model(x, t):
    count[0] += 1
    return 0.1 * x

  sched = schedules.make_schedule(schedules.get_beta_schedule("linear", num_diffusion_steps=T_))
  jaxpr = jax.make_jaxpr(lambda k: sampling.ancestral_sample(
      sched, model_fn=model, shape=(2, 3), key=k))(jax.random.key(0))
  return count[0], len(jaxpr.eqns)


def test_step_body_traced_once_and_program_size_independent_of_T():
  assert _count_traces(50) == _count_traces(1000) == (1, _count_traces(50)[1])


def test_params_as_argument_grad_and_vmap():
  shape = (6, 2)
  sched_betas = schedules.get_beta_schedule("linear", num_diffusion_steps=100)
  sched = schedules.make_schedule(sched_betas)

  @jax.jit
  def draw(params, key):
    return sampling.ddim_sample(
        sched, model_fn=lambda x, t: params["w"] * x + params["b"], shape=shape, key=key,
        timesteps=schedules.sampling_timesteps(sched_betas, num_steps=10), clip_denoised=False)

  params = {"w": jnp.float32(0.3), "b": jnp.float32(0.1)}
  x = draw(params, jax.random.key(0))
  assert x.shape == shape and np.all(np.isfinite(x))
  g = jax.grad(lambda p: draw(p, jax.random.key(0)).mean())(params)
  assert np.isfinite(g["w"]) and g["b"] != 0
  keys = jax.random.split(jax.random.key(0), 3)
  batched = jax.vmap(lambda k: draw(params, k))(keys)
  np.testing.assert_allclose(batched[0], draw(params, keys[0]), rtol=1e-5, atol=1e-6)
  assert not np.allclose(batched[0], batched[1])


def test_learned_range_and_other_mean_types_sample():
  sched = schedules.make_schedule(schedules.get_beta_schedule("cosine", num_diffusion_steps=50))
  model = lambda x, t: jnp.concatenate([0.5 * x, jnp.tanh(x)], -1)
  for mean_type in ["eps", "xstart", "v"]:
    x = sampling.ancestral_sample(
        sched, model_fn=model, shape=(4, 2, 2, 3), key=jax.random.key(0), model_mean_type=mean_type,
        model_var_type="learned_range")
    assert x.shape == (4, 2, 2, 3) and np.all(np.isfinite(x))


@pytest.mark.parametrize("call, match", [
    (lambda: sampling.ancestral_sample(SCHED, model_fn=lambda x, t: x, shape=(4,), key=jax.random.key(0)), "shape"),
    (
        lambda: sampling.ancestral_sample(
            SCHED, model_fn=lambda x, t: x, shape=(4, 2), key=jax.random.key(0), model_var_type="x"),
        "model_var_type"),
    (
        lambda: sampling.ancestral_sample(
            SCHED, model_fn=lambda x, t: x, shape=(4, 2), key=jax.random.key(0), return_every=0),
        "return_every"),
    (
        lambda: sampling.ddim_sample(SCHED, model_fn=lambda x, t: x, shape=(4, 2), key=jax.random.key(0), eta=-1.0),
        "eta"),
    (
        lambda: sampling.ddim_sample(SCHED, model_fn=lambda x, t: x, shape=(4, 2), key=jax.random.key(0),
                                     timesteps=[0, 500, 999]),
        "sampling order"),
])
def test_bad_input_raises(call, match):
  with pytest.raises(ValueError, match=match):
    call()


@pytest.mark.parametrize("clip", [True, False])
def test_ddim_clips_the_predicted_x0_when_asked(clip):
  """At its last step DDIM returns the predicted x_0 itself (abar = 1 after it): a model predicting x_0 = 5
  ends at 1 with clipping and at 5 without, for the x_0 and the eps parameterisations."""
  shape = (4, 3)
  for mean_type, model in [("xstart", lambda x, t: jnp.full_like(x, 5.0)),
                           ("eps", lambda x, t: jnp.zeros_like(x))]:
    out = sampling.ddim_sample(
        SCHED, model_fn=model, shape=shape, key=jax.random.key(0), timesteps=schedules.sampling_timesteps(
            BETAS, num_steps=10),
        model_mean_type=mean_type,
        clip_denoised=clip)
    if mean_type == "xstart":
      np.testing.assert_allclose(out, np.full(shape, 1.0 if clip else 5.0), rtol=1e-6)
    else:  # eps = 0: x_0 = x_T / sqrt(abar_T), ~150 x_T; clipped it cannot leave [-1, 1]
      assert (np.abs(out) <= 1.0).all() if clip else (np.abs(out) > 1.0).any()


# ---------------------------------------------------------------------------------- classifier-free guidance

CLASS_M, CLASS_S = np.array([-0.6, 0.1, 0.7]), np.array([0.2, 0.5, 0.3])  # class k: N(m_k, s_k^2); K = 3


def class_gaussian_oracle(x_t, t, y):
  """The optimal eps of class y's Gaussian; for the null label y = 3, of their equal-weight mixture (the
  posterior-weighted per-class predictions: p(k | x_t) from N(x_t; sqrt(abar) m_k, abar s_k^2 + 1 - abar))."""
  abar = SCHED.alphas_cumprod[t][:, None, None]
  m, s = jnp.asarray(CLASS_M)[None, None, :], jnp.asarray(CLASS_S)[None, None, :]
  var = abar * s**2 + 1 - abar
  eps_k = jnp.sqrt(1 - abar) * (x_t[..., None] - jnp.sqrt(abar) * m) / var  # (B, D, K)
  logp = -0.5 * (x_t[..., None] - jnp.sqrt(abar) * m) ** 2 / var - 0.5 * jnp.log(var)
  mixture = jnp.sum(jax.nn.softmax(logp, axis=-1) * eps_k, axis=-1)
  per_class = jnp.take_along_axis(eps_k, jnp.minimum(y, 2)[:, None, None].repeat(x_t.shape[1], 1), axis=-1)[..., 0]
  return jnp.where((y == 3)[:, None], mixture, per_class)


@pytest.mark.slow
def test_guidance_on_a_class_conditional_gaussian_oracle():
  """w = 1 samples each class's exact sampler law; the null label (w = 0) the mixture's mean and variance;
  within 5 standard errors of 100k scalars (about 33k per class)."""
  labels = jnp.arange(N_ROWS) % 3
  draw = lambda w, key: sampling.ancestral_sample(
      SCHED,
      model_fn=guidance.classifier_free_guidance(class_gaussian_oracle, labels=labels, null_label=3, guidance_scale=w),
      shape=(N_ROWS, N_DIMS), key=key, model_var_type="fixed_small", clip_denoised=False)
  x = np.asarray(draw(1.0, jax.random.key(11)))
  for k in range(3):
    rows = x[np.asarray(labels) == k]
    mu, sd = ref.gaussian_sampler_moments(ABAR, CLASS_M[k], CLASS_S[k], variance="small")
    got_mu, got_sd = _moments(rows)
    n = rows.size
    assert abs(got_mu - mu) < 5 * sd / np.sqrt(n), (k, got_mu, mu)
    assert abs(got_sd - sd) < 5 * sd / np.sqrt(2 * (n - 1)), (k, got_sd, sd)
  null = np.asarray(draw(0.0, jax.random.key(12))).ravel().astype(np.float64)
  mean = CLASS_M.mean()
  var = np.mean(CLASS_S**2 + CLASS_M**2) - mean**2
  fourth = np.mean([((CLASS_M[k] - mean) ** 4 + 6 * (CLASS_M[k] - mean) ** 2 * CLASS_S[k] ** 2 + 3 * CLASS_S[k] ** 4)
                    for k in range(3)])  # the mixture's 4th central moment: se(var)^2 = (mu4 - var^2) / n
  assert abs(null.mean() - mean) < 5 * np.sqrt(var / null.size)
  assert abs(null.var(ddof=1) - var) < 5 * np.sqrt((fourth - var**2) / null.size)


ZT_BETAS = schedules.rescale_zero_terminal_snr(BETAS)
ZT_SCHED = schedules.make_schedule(ZT_BETAS)


@pytest.mark.parametrize("mean_type", ["v", "xstart"])
def test_zero_terminal_snr_samples_start_from_pure_noise_and_reach_the_data(mean_type):
  """Under zero terminal SNR, x_T is pure noise. For data at one point C the exact v or x_0 network gives C at
  t = T; DDIM (trailing spacing) follows the float64 closed form x_t = sqrt(abar_t) C + sqrt(1 - abar_t) x_T from
  its first step and ends at C; the ancestral sampler ends at C; the bound's terms are finite and its prior
  term is 0. The eps network cannot give x_0 at t = T (the config refuses it)."""
  ab = ref.alphas_cumprod(ZT_BETAS)
  assert ab[-1] == 0.0
  model = point_mass_model(mean_type, ZT_SCHED)
  visited = schedules.sampling_timesteps(ZT_BETAS, num_steps=15, spacing="trailing")
  assert visited[0] == T - 1
  x_T = jax.random.normal(jax.random.key(3), (5, 3))
  x0, traj = sampling.ddim_sample(
      ZT_SCHED, model_fn=model, shape=(5, 3), key=jax.random.key(0), timesteps=visited, model_mean_type=mean_type,
      clip_denoised=False, return_every=1, x_T=x_T)
  abar = ab[visited][:, None, None]
  np.testing.assert_allclose(traj.x_t, np.sqrt(abar) * C + np.sqrt(1 - abar) * np.asarray(x_T), atol=1e-5)
  np.testing.assert_allclose(x0, np.broadcast_to(C, x0.shape), atol=1e-5)
  ancestral = sampling.ancestral_sample(ZT_SCHED, model_fn=model, shape=(5, 3), key=jax.random.key(1),
                                        model_mean_type=mean_type, clip_denoised=False)
  np.testing.assert_allclose(ancestral, np.broadcast_to(C, ancestral.shape), atol=1e-4)
  grid = jnp.round(jnp.broadcast_to(jnp.asarray(C), (4, 3)) * 127.5) / 127.5
  bound = losses.variational_bound(ZT_SCHED, model_fn=point_mass_model(mean_type, ZT_SCHED), x_start=grid,
                                   key=jax.random.key(2), model_mean_type=mean_type)
  assert np.isfinite(bound.terms_bpd).all() and np.isfinite(bound.total_bpd).all()
  np.testing.assert_allclose(bound.prior_bpd, 0.0, atol=1e-7)
  eps = point_mass_model("eps", ZT_SCHED)(x_T, jnp.full((5,), T - 1))
  last = jnp.full((5,), T - 1)
  assert not np.isfinite(diffusion.predict_xstart_from_eps(ZT_SCHED, x_t=x_T, t=last, eps=eps)).any()

"""Editing: inpainting (every sampler, RePaint's resampling), SDEdit and DDIM inversion, against the exact laws of
Gaussian data (its exact eps and conditional laws are closed forms)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from diffusion_jax import editing, karras, sampling, schedules, solvers

T = 1000
BETAS = schedules.get_beta_schedule("linear", num_diffusion_steps=T)
SCHED = schedules.make_schedule(BETAS)
MU = np.array([0.2, -0.3])
RHO = 0.9
SIGMA = np.array([[1.0, RHO], [RHO, 1.0]]) * 0.25  # data N(MU, SIGMA): two strongly correlated pixels


def gaussian_oracle(schedule):
  """The exact eps of N(MU, SIGMA): sqrt(1 - abar) C^-1 (x_t - sqrt(abar) MU), C = abar SIGMA + (1 - abar) I."""
  def model_fn(x, t):
    a = schedule.alphas_cumprod[t][:, None, None]
    c = a * jnp.asarray(SIGMA, x.dtype) + (1 - a) * jnp.eye(2, dtype=x.dtype)
    r = x - jnp.sqrt(a[:, :, 0]) * jnp.asarray(MU, x.dtype)
    return jnp.sqrt(1 - a[:, :, 0]) * jnp.linalg.solve(c, r[..., None])[..., 0]
  return model_fn


def reference_walk(t_T, jump_length, jump_n_sample):
  """RePaint's `get_schedule_jump` (Lugmayr et al. 2022, reference code), as published."""
  jumps = {}
  for j in range(0, t_T - jump_length, jump_length):
    jumps[j] = jump_n_sample - 1
  t = t_T
  ts = []
  while t >= 1:
    t = t - 1
    ts.append(t)
    if jumps.get(t, 0) > 0:
      jumps[t] = jumps[t] - 1
      for _ in range(jump_length):
        t = t + 1
        ts.append(t)
  ts.append(-1)
  return ts


@pytest.mark.parametrize("num_steps, jump_length, resample", [(250, 10, 10), (25, 5, 3), (40, 7, 1), (10, 20, 4)])
def test_repaint_walk_is_the_reference_codes(num_steps, jump_length, resample):
  walk = editing.repaint_timesteps(num_steps, jump_length=jump_length, resample=resample)
  np.testing.assert_array_equal(walk, reference_walk(num_steps, jump_length, resample))
  assert set(np.abs(np.diff(walk))) == {1}


KNOWN = 0.8  # pixel 0 is known, pixel 1 is inpainted: its law is N(MU_1 + RHO (KNOWN - MU_0), (1 - RHO^2) 0.25)
COND_MEAN, COND_SD = MU[1] + RHO * (KNOWN - MU[0]), np.sqrt((1 - RHO**2) * 0.25)


def _inpainting(n):
  return sampling.Inpainting(jnp.tile(jnp.array([[KNOWN, 0.0]]), (n, 1)), jnp.tile(jnp.array([[1.0, 0.0]]), (n, 1)))


@pytest.mark.slow
def test_repaint_samples_the_gaussian_conditional_and_replacement_alone_does_not():
  """With the paper's j = 10, r = 10 the inpainted pixel's mean and sd are within 5 standard errors of the
  conditional law's (4000 samples; at 20,000 samples a residual of the method remains: mean 0.228 and sd 0.215
  against 0.240 and 0.218); without resampling (r = 1) the mean is far off (0.066): the generated pixel hardly
  sees the known one. The known pixel is the input exactly."""
  n = 4000
  inpaint = _inpainting(n)
  draw = jax.jit(lambda k, r: editing.repaint_sample(
      SCHED, model_fn=gaussian_oracle(SCHED), inpaint=inpaint, key=k, jump_length=10, resample=r, clip_denoised=False,
      model_var_type="fixed_small"), static_argnums=1)
  x = np.asarray(draw(jax.random.key(0), 10))
  np.testing.assert_array_equal(x[:, 0], np.float32(KNOWN))
  assert abs(x[:, 1].mean() - COND_MEAN) < 5 * COND_SD / np.sqrt(n), x[:, 1].mean()
  assert abs(x[:, 1].std() - COND_SD) < 5 * COND_SD / np.sqrt(2 * n), x[:, 1].std()
  plain = np.asarray(draw(jax.random.key(0), 1))
  assert abs(plain[:, 1].mean() - COND_MEAN) > 20 * COND_SD / np.sqrt(n), plain[:, 1].mean()


def test_repaint_without_resampling_is_the_ancestral_sampler_with_replacement():
  inpaint, model = _inpainting(8), gaussian_oracle(SCHED)
  a = editing.repaint_sample(SCHED, model_fn=model, inpaint=inpaint, key=jax.random.key(0), resample=1,
                             clip_denoised=False)
  b = sampling.ancestral_sample(SCHED, model_fn=model, shape=(8, 2), key=jax.random.key(0), inpaint=inpaint,
                                clip_denoised=False)
  assert np.isfinite(a).all() and a.shape == (8, 2)
  np.testing.assert_allclose(a[:, 0], KNOWN)
  np.testing.assert_allclose(b[:, 0], KNOWN)


def _every_sampler(model, shape, inpaint):
  ts = schedules.sampling_timesteps(BETAS, num_steps=12, spacing="trailing")
  key = jax.random.key(3)
  return {
      "ancestral": sampling.ancestral_sample(SCHED, model_fn=model, shape=shape, key=key, inpaint=inpaint),
      **({} if inpaint is None else {"repaint": editing.repaint_sample(
          schedules.respace(BETAS, timesteps=ts), model_fn=model, inpaint=inpaint, key=key, jump_length=3,
          resample=3)}),
      "ddim": sampling.ddim_sample(SCHED, model_fn=model, shape=shape, key=key, timesteps=ts, inpaint=inpaint),
      **{solver: solvers.solver_sample(solvers.solver_table(BETAS, timesteps=ts, solver=solver), model_fn=model,
                                       shape=shape, key=key, inpaint=inpaint) for solver in solvers.SOLVERS},
      **{name: karras.karras_sample(karras.karras_table(BETAS, timesteps=ts, sampler=name), model_fn=model,
                                    shape=shape, key=key, inpaint=inpaint) for name in karras.SAMPLERS},
  }


def test_every_sampler_keeps_the_known_region_exactly():
  """A per-example mask over the pixels (one for all channels): where it is 1 the result is the image, bit for
  bit; elsewhere the samplers generate."""
  shape = (3, 4, 4, 2)
  image = jax.random.uniform(jax.random.key(0), shape, minval=-1, maxval=1)
  mask = (jax.random.uniform(jax.random.key(1), (*shape[:-1], 1)) < 0.5).astype(jnp.float32)
  model = lambda x, t: 0.3 * x
  for name, out in _every_sampler(model, shape, sampling.Inpainting(image, mask)).items():
    known = np.broadcast_to(np.asarray(mask) == 1, shape)
    np.testing.assert_array_equal(np.asarray(out)[known], np.asarray(image)[known], err_msg=name)
    assert not np.allclose(np.asarray(out)[~known], np.asarray(image)[~known]), name


@pytest.mark.parametrize("mask_shape, match", [((3, 4, 4, 3), "inpaint.mask must have shape"),
                                               ((3, 4, 4), "inpaint.mask must have shape")])
def test_a_mask_of_the_wrong_shape_is_refused_before_compiling(mask_shape, match):
  shape = (3, 4, 4, 2)
  inpaint = sampling.Inpainting(jnp.zeros(shape), jnp.ones(mask_shape))
  with pytest.raises(ValueError, match=match):
    sampling.ddim_sample(SCHED, model_fn=lambda x, t: x, shape=shape, key=jax.random.key(0), inpaint=inpaint)
  with pytest.raises(ValueError, match="inpaint.image must have"):
    sampling.ancestral_sample(SCHED, model_fn=lambda x, t: x, shape=(2, 4, 4, 2), key=jax.random.key(0),
                              inpaint=sampling.Inpainting(jnp.zeros(shape), jnp.ones(shape)))


def _sdedit_law(x_in, start):
  """The law of x_0 ~ p(x_0 | x_s), x_s ~ q(x_s | x_in) (float64): mean MU + abar SIGMA C^-1 (x_in - MU)."""
  abar = np.cumprod(1 - BETAS)[start]
  return MU + abar * SIGMA @ np.linalg.inv(abar * SIGMA + (1 - abar) * np.eye(2)) @ (x_in - MU)


def _sdedit_sampler_law(x_in, start):
  """Mean and sd per pixel of the ancestral sampler (beta-tilde variances) from x_s ~ N(sqrt(abar_s) x_in,
  1 - abar_s), exactly: the process decouples along SIGMA's eigenvectors, each a 1-D Gaussian
  (`reference.gaussian_sampler_moments`)."""
  abar = np.cumprod(1 - BETAS)[:start + 1]
  lam, q = np.linalg.eigh(SIGMA)
  y_in, y_mu = q.T @ x_in, q.T @ MU
  moments = [ref.gaussian_sampler_moments(abar, y_mu[i], np.sqrt(lam[i]), variance="small",
                                          start=(np.sqrt(abar[-1]) * y_in[i], 1 - abar[-1])) for i in range(2)]
  mean_y, sd_y = np.array(moments).T
  return q @ mean_y, np.sqrt(np.diag(q @ np.diag(sd_y**2) @ q.T))


@pytest.mark.parametrize("start", [5, 300, T - 1])
def test_sdedit_follows_the_exact_law_near_its_input_and_forgets_it_from_t_T(start):
  """SDEdit with the ancestral sampler from `start`, an input far from the data: 4000 samples' mean and sd per
  pixel within 5 standard errors of the sampler's exact law; that law is the posterior p(x_0 | x_s)'s mean within
  0.01; from a small start the result is the input within 0.1 on average (sd < 0.05), from T - 1 the data law
  (mean MU)."""
  n = 4000
  x_in = np.array([2.0, -2.0])
  image = jnp.tile(jnp.asarray(x_in, jnp.float32), (n, 1))
  x_s = editing.sdedit_start(SCHED, image=image, start=start, key=jax.random.key(0))
  visited = editing.sdedit_timesteps(BETAS, start=start)
  assert visited[0] == start and len(visited) == start + 1
  out = np.asarray(sampling.ancestral_sample(schedules.respace(BETAS, timesteps=visited),
                                             model_fn=gaussian_oracle(SCHED), shape=(n, 2), key=jax.random.key(1),
                                             model_var_type="fixed_small", clip_denoised=False, x_T=x_s))
  mean, sd = _sdedit_sampler_law(x_in, start)
  np.testing.assert_array_less(np.abs(out.mean(0) - mean), 5 * sd / np.sqrt(n))
  np.testing.assert_array_less(np.abs(out.std(0) - sd), 5 * sd / np.sqrt(2 * n))
  np.testing.assert_allclose(mean, _sdedit_law(x_in, start), atol=0.01)
  if start == 5:
    assert np.abs(out.mean(0) - x_in).max() < 0.1 and out.std(0).max() < 0.05
  if start == T - 1:
    np.testing.assert_allclose(mean, MU, atol=0.01)


def test_sdedit_timesteps_cut_the_process_at_start():
  for spacing in ("trailing", "linspace", "logsnr", "karras"):
    ts = editing.sdedit_timesteps(BETAS, start=400, num_steps=20, spacing=spacing)
    assert ts[0] == 400 and len(ts) == 20 and ts[-1] >= 0 and np.all(np.diff(ts) < 0), spacing
  for bad in (-1, T, 2.5):
    with pytest.raises(ValueError, match="start = .* is invalid"):
      editing.sdedit_timesteps(BETAS, start=bad)


def test_ddim_inversion_then_decoding_returns_the_input_with_an_error_falling_with_the_steps():
  """Gaussian data, its exact eps, float64: x_0 -> x_T -> x_0 over n trailing steps; the round trip's error falls
  at about first order (n = 10, 40, 160), and the latents of data samples are N(0, I) in law (the ODE's x_T marginal
  N(0, abar SIGMA + (1 - abar) I), abar = 4e-5), within 5 standard errors of 2000 samples."""
  with jax.enable_x64(True):
    sched = schedules.make_schedule(BETAS, dtype=jnp.float64)
    model = gaussian_oracle(sched)
    x0 = MU + jax.random.normal(jax.random.key(0), (2000, 2), jnp.float64) @ jnp.linalg.cholesky(SIGMA).T
    errors = []
    for n in (10, 40, 160):
      ts = schedules.sampling_timesteps(BETAS, num_steps=n, spacing="trailing")
      latent = editing.ddim_invert(sched, model_fn=model, x_0=x0, timesteps=ts)
      back = sampling.ddim_sample(sched, model_fn=model, shape=x0.shape, key=jax.random.key(1), timesteps=ts,
                                  clip_denoised=False, x_T=latent)
      errors.append(float(jnp.abs(back - x0).max()))
  assert errors[0] > errors[1] > errors[2] and errors[2] < 0.05, errors
  slope = np.polyfit(np.log([10, 40, 160]), np.log(errors), 1)[0]
  assert slope < -0.8, (errors, slope)
  latent = np.asarray(latent)
  np.testing.assert_array_less(np.abs(latent.mean(0)), 5 / np.sqrt(2000))
  np.testing.assert_array_less(np.abs(latent.std(0) - 1), 5 / np.sqrt(2 * 2000))


def test_repaint_is_one_program_whatever_its_walk():
  """One trace of the network (its one `sin`) and the same program for 50 and 1000 steps and 1 or 10
  resamplings: the walk is the scan's input."""
  def program(num_steps, resample):
    sched = schedules.make_schedule(schedules.get_beta_schedule("linear", num_diffusion_steps=num_steps))
    inpaint = sampling.Inpainting(jnp.zeros((2, 4, 4, 1)), jnp.ones((2, 4, 4, 1)))
    draw = lambda s, k: editing.repaint_sample(s, model_fn=lambda x, t: jnp.sin(x), inpaint=inpaint, key=k,
                                               resample=resample)
    jaxpr = jax.make_jaxpr(draw)(sched, jax.random.key(0))
    return str(jaxpr).count(" sin "), len(jaxpr.eqns)

  assert program(50, 1) == program(1000, 10) == (1, program(50, 1)[1])


def test_an_empty_mask_leaves_every_sampler_as_it_is():
  """Nothing known (mask 0): the replacement is the identity, so each sampler's result is its plain one (to float
  rounding: XLA fuses the blend differently); a replacement that touched the generated region would show here."""
  shape = (3, 4, 4, 2)
  model = lambda x, t: 0.3 * x
  empty = sampling.Inpainting(jnp.ones(shape), jnp.zeros((*shape[:-1], 1)))
  plain, inpainted = _every_sampler(model, shape, None), _every_sampler(model, shape, empty)
  assert set(plain) == set(inpainted) - {"repaint"}  # RePaint needs a known region
  for name in plain:
    np.testing.assert_allclose(inpainted[name], plain[name], rtol=1e-6, atol=1e-6, err_msg=name)

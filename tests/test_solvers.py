"""DPM-Solver++ and UniPC: diffusers' schedulers step for step, DDIM at order 1, closed forms, the order of
convergence on a Gaussian oracle, program size, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from diffusion_jax import sampling, schedules, solvers

T = 1000
BETAS = schedules.get_beta_schedule("linear", num_diffusion_steps=T)
ABAR = np.cumprod(1 - BETAS)
SCHED = schedules.make_schedule(BETAS)
M, S = 0.3, 0.5  # the Gaussian data N(M, S^2) of the oracles


def perturbed_oracle(lib, abar, x):
  """The optimal eps for N(M, S^2) data plus a smooth non-linear term; `lib` is jnp or torch."""
  a, s = lib.sqrt(abar), lib.sqrt(1 - abar)
  return s * (x - a * M) / (abar * S * S + 1 - abar) + 0.5 * a * lib.sin(3 * x)


def jax_model(x, t):
  abar = SCHED.alphas_cumprod[t].reshape((-1,) + (1,) * (x.ndim - 1))
  return perturbed_oracle(jnp, abar, x)


def _diffusers_trajectory(solver, order, timesteps, x_T, clip, prediction_type="epsilon", model=None):
  """diffusers' scheduler (torch, float32) stepped on our timesteps: the state before each step, and the end.

  `set_timesteps` makes a schedule of the right length; its timesteps and sigmas are then replaced by ours
  (sigma = sqrt((1 - abar) / abar), 0 after the last step: `final_sigmas_type="zero"`).
  """
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  cls = {"dpm_solver++": diffusers.DPMSolverMultistepScheduler, "unipc": diffusers.UniPCMultistepScheduler}[solver]
  extra = {"algorithm_type": "dpmsolver++"} if solver == "dpm_solver++" else {}
  scheduler = cls(num_train_timesteps=T, beta_schedule="linear", solver_order=order, prediction_type=prediction_type,
                  thresholding=clip, sample_max_value=1.0, **extra)  # thresholds at s = 1: clipping to [-1, 1]
  scheduler.set_timesteps(len(timesteps))
  scheduler.timesteps = torch.tensor(timesteps.astype(np.int64))
  scheduler.sigmas = torch.tensor(np.append(np.sqrt((1 - ABAR[timesteps]) / ABAR[timesteps]), 0.0), dtype=torch.float32)
  model = model or (lambda x, t: perturbed_oracle(torch, torch.tensor(ABAR[t], dtype=torch.float32), x))
  x = torch.tensor(np.asarray(x_T).transpose(0, 3, 1, 2))  # NHWC -> NCHW; the model is element-wise
  states = []
  for t in timesteps:
    states.append(x.numpy().transpose(0, 2, 3, 1))
    x = scheduler.step(model(x, int(t)), int(t), x).prev_sample
  return np.stack(states), x.numpy().transpose(0, 2, 3, 1)


CASES = [(7, "linspace"), (10, "trailing"), (20, "logsnr")]  # 7 and 10 < 15: diffusers' lower-order final steps


@pytest.mark.parametrize("n, spacing", CASES)
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("solver", solvers.SOLVERS)
def test_trajectory_equals_diffusers_scheduler(solver, order, n, spacing):
  timesteps = schedules.sampling_timesteps(BETAS, num_steps=n, spacing=spacing)
  x_T = jax.random.normal(jax.random.key(n), (2, 4, 4, 3))
  clip = spacing != "logsnr"
  want_states, want = _diffusers_trajectory(solver, order, timesteps, x_T, clip)
  table = solvers.solver_table(BETAS, timesteps=timesteps, solver=solver, order=order)
  draw = jax.jit(lambda tab, k: solvers.solver_sample(
      tab, model_fn=jax_model, shape=x_T.shape, key=k, clip_denoised=clip, return_every=1, x_T=x_T))
  got, traj = draw(table, jax.random.key(0))
  np.testing.assert_array_equal(traj.timesteps, timesteps)
  np.testing.assert_allclose(traj.x_t, want_states, atol=1e-5)
  np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("mean_type, prediction_type", [("v", "v_prediction"), ("xstart", "sample")])
@pytest.mark.parametrize("solver", solvers.SOLVERS)
def test_other_parameterisations_equal_diffusers(solver, mean_type, prediction_type):
  """The network's v or x_0 turned into the data prediction as diffusers' `prediction_type` does."""
  torch = pytest.importorskip("torch")
  timesteps = schedules.sampling_timesteps(BETAS, num_steps=12, spacing="trailing")
  x_T = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))

  def output(lib, abar, x):  # v = alpha eps - sigma x_0, with x_0 = (x - sigma eps) / alpha
    eps = perturbed_oracle(lib, abar, x)
    x0 = (x - lib.sqrt(1 - abar) * eps) / lib.sqrt(abar)
    return lib.sqrt(abar) * eps - lib.sqrt(1 - abar) * x0 if mean_type == "v" else x0

  torch_model = lambda x, t: output(torch, torch.tensor(ABAR[t], dtype=torch.float32), x)
  _, want = _diffusers_trajectory(solver, 2, timesteps, x_T, True, prediction_type, torch_model)
  model = lambda x, t: output(jnp, SCHED.alphas_cumprod[t][:, None, None, None], x)
  got = solvers.solver_sample(
      solvers.solver_table(BETAS, timesteps=timesteps, solver=solver), model_fn=model, shape=x_T.shape,
      key=jax.random.key(0), model_mean_type=mean_type, x_T=x_T)
  np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("spacing", ["linspace", "trailing", "logsnr"])
@pytest.mark.parametrize("clip", [True, False])
def test_dpm_solver_pp_of_order_one_is_ddim_with_eta_zero(spacing, clip):
  timesteps = schedules.sampling_timesteps(BETAS, num_steps=15, spacing=spacing)
  x_T = jax.random.normal(jax.random.key(2), (8, 3))
  ddim, ddim_traj = sampling.ddim_sample(
      SCHED, model_fn=jax_model, shape=(8, 3), key=jax.random.key(0), timesteps=timesteps, clip_denoised=clip,
      return_every=1, x_T=x_T)
  dpm, dpm_traj = solvers.solver_sample(
      solvers.solver_table(BETAS, timesteps=timesteps, order=1), model_fn=jax_model, shape=(8, 3),
      key=jax.random.key(0), clip_denoised=clip, return_every=1, x_T=x_T)
  np.testing.assert_allclose(dpm_traj.x_t, ddim_traj.x_t, rtol=1e-5, atol=1e-5)
  # x_0 = (x - sigma eps) / alpha amplifies float32 rounding by 1/alpha (156 at t = 999): compare alpha x_0.
  alpha = np.sqrt(ABAR[timesteps])[:, None, None]
  np.testing.assert_allclose(alpha * dpm_traj.pred_xstart, alpha * ddim_traj.pred_xstart, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dpm, ddim, rtol=1e-5, atol=1e-5)


C = np.array([0.3, -0.7, 0.9])  # point-mass data: every example is C


@pytest.mark.parametrize("solver, order", [("dpm_solver++", 3), ("unipc", 2)])
def test_point_mass_data_follows_the_closed_form_at_every_visited_step(solver, order):
  """The data prediction is C at every (x_t, t), so the exact flow x_t = alpha_t C + sigma_t e (e: x_T's noise)
  is what every order must give, on the trailing spacing (t_0 = T - 1, each next step from the table)."""
  timesteps = schedules.sampling_timesteps(BETAS, num_steps=10, spacing="trailing")
  assert timesteps[0] == T - 1
  x_T = jax.random.normal(jax.random.key(3), (5, 3))
  model = lambda x, t: (x - SCHED.sqrt_alphas_cumprod[t][:, None] * C) / SCHED.sqrt_one_minus_alphas_cumprod[t][:, None]
  x0, traj = solvers.solver_sample(
      solvers.solver_table(BETAS, timesteps=timesteps, solver=solver, order=order), model_fn=model, shape=(5, 3),
      key=jax.random.key(0), clip_denoised=False, return_every=1, x_T=x_T)
  abar = ABAR[timesteps][:, None, None]
  e = (np.asarray(x_T, np.float64) - np.sqrt(abar[0]) * C) / np.sqrt(1 - abar[0])
  np.testing.assert_allclose(traj.x_t, np.sqrt(abar) * C + np.sqrt(1 - abar) * e, atol=2e-5)
  np.testing.assert_allclose(x0, np.broadcast_to(C, x0.shape), atol=1e-5)


# Measured slopes of log error against log n (n = 20, 40, 80, 160): DDIM and DPM-Solver++ 1: -0.99; DPM-Solver++
# 2: -1.97, 3: -2.33 (its first, first-order step limits it); UniPC 1: -2.00, 2: -2.96, 3: -3.66 (the corrector
# adds an order; the lower-order final steps take some back).
ORDER_CASES = [("ddim", 1, 0.9), ("dpm_solver++", 1, 0.9), ("dpm_solver++", 2, 1.8), ("dpm_solver++", 3, 2.1),
               ("unipc", 1, 1.8), ("unipc", 2, 2.7), ("unipc", 3, 3.3)]


@pytest.mark.parametrize("solver, order, min_slope", ORDER_CASES)
def test_error_of_the_sampled_law_falls_at_the_solvers_order(solver, order, min_slope):
  """Data N(M, S^2) with its exact eps: a deterministic sampler is an affine map x_T -> b + A x_T, so started from
  the exact x_T marginal N(alpha M, alpha^2 S^2 + sigma^2) its law is exactly N(b + A alpha M, A^2 r_T^2). The
  exact flow ends at N(M, (alpha_0 S^2 / r_0)^2) (the last step returns the x_0 prediction at t = 0). The W2
  distance between the two falls like n^-order: float64, log-SNR spacing, T = 100,000 (the linear schedule of
  T = 1000, finer): with T = 1000 the integer steps near t = 0 (lambda jumps 0.55 from t = 1 to 0) put a floor
  under the error of the third-order solvers."""
  big_t = 100_000
  betas = schedules.get_beta_schedule("linear", num_diffusion_steps=big_t)
  abar = np.cumprod(1 - betas)
  r = lambda t: np.sqrt(abar[t] * S * S + 1 - abar[t])
  errors = []
  ns = [20, 40, 80, 160]
  with jax.enable_x64(True):
    sched = schedules.make_schedule(betas, dtype=jnp.float64)

    oracle = ref.gaussian_eps(sched, M, S)

    for n in ns:
      ts = schedules.sampling_timesteps(betas, num_steps=n, spacing="logsnr")
      x_T = jnp.array([[0.0], [1.0]])
      if solver == "ddim":
        out = sampling.ddim_sample(
            sched, model_fn=oracle, shape=(2, 1), key=jax.random.key(0), timesteps=ts, clip_denoised=False, x_T=x_T)
      else:
        table = solvers.solver_table(betas, timesteps=ts, solver=solver, order=order, dtype=jnp.float64)
        out = solvers.solver_sample(
            table, model_fn=oracle, shape=(2, 1), key=jax.random.key(0), clip_denoised=False, x_T=x_T)
      b, A = float(out[0, 0]), float(out[1, 0] - out[0, 0])
      mean, sd = b + A * np.sqrt(abar[ts[0]]) * M, abs(A) * r(ts[0])
      errors.append(np.hypot(mean - M, sd - np.sqrt(abar[ts[-1]]) * S * S / r(ts[-1])))
  slope = np.polyfit(np.log(ns), np.log(errors), 1)[0]
  assert slope < -min_slope, (errors, slope)
  assert errors[-1] < 1e-2


def _program(solver, n):
  count = [0]

  def model(x, t):
    count[0] += 1
    return 0.1 * x

  table = solvers.solver_table(
      BETAS, timesteps=schedules.sampling_timesteps(BETAS, num_steps=n, spacing="trailing"), solver=solver, order=3)
  draw = jax.jit(lambda tab, k: solvers.solver_sample(tab, model_fn=model, shape=(4, 8, 8, 3), key=k))
  lowered = draw.lower(table, jax.random.key(0))
  temp = lowered.compile().memory_analysis().temp_size_in_bytes
  return count[0], len(jax.make_jaxpr(draw)(table, jax.random.key(0)).eqns), temp


@pytest.mark.parametrize("solver", solvers.SOLVERS)
def test_program_and_memory_do_not_grow_with_the_number_of_steps(solver):
  """One trace of the network, the same program and the same scratch memory for 10 and 500 steps: the steps
  are the scan's length and the table's leading axis, nothing else."""
  assert _program(solver, 10) == _program(solver, 500)
  assert _program(solver, 10)[0] == 1


def test_a_learned_range_output_is_refused():
  table = solvers.solver_table(BETAS, timesteps=schedules.sampling_timesteps(BETAS, num_steps=5, spacing="trailing"))
  with pytest.raises(ValueError, match=r"returned shape \(4, 6\) for x_t of shape \(4, 3\).*mean output only"):
    solvers.solver_sample(
        table, model_fn=lambda x, t: jnp.concatenate([x, x], -1), shape=(4, 3), key=jax.random.key(0))


@pytest.mark.parametrize("call, match", [
    (
        lambda: solvers.solver_table(BETAS, timesteps=[999, 500, 0], solver="dpm_solver"),
        "solver = 'dpm_solver' is unknown"),
    (
        lambda: solvers.solver_table(BETAS, timesteps=[999, 500, 0], order=0),
        r"order = 0 is invalid; allowed: 1, 2 or 3"),
    (lambda: solvers.solver_table(BETAS, timesteps=[999, 500, 0], order=4), r"order = 4 is invalid"),
    (lambda: solvers.solver_table(BETAS, timesteps=[0, 500, 999]), "strictly decreasing"),
    (lambda: solvers.solver_table(BETAS, timesteps=[1000, 500, 0]), r"in \[0, T = 1000\)"),
    (lambda: solvers.solver_table(BETAS, timesteps=[999, 999, 0]), "strictly decreasing"),
    (
        lambda: schedules.sampling_timesteps(BETAS, num_steps=1001, spacing="trailing"),
        r"num_steps = 1001 is invalid.*\[1, T = 1000\]"),
    (lambda: schedules.sampling_timesteps(BETAS, num_steps=10, spacing="cosine"), "spacing = 'cosine' is unknown"),
])
def test_bad_input_raises(call, match):
  with pytest.raises(ValueError, match=match):
    call()

"""Forward process, posterior and parameterisations against float64 references.

float32 tolerance: each function is a sum of scaled terms, e.g. x_0 = a x_t - b eps.
Where terms cancel (at large t, a and b are ~158 for x_0 from eps) no float32
code can reach a relative error of 1e-5 on the result; there we assert the
error bound of float32 summation instead, |error| <= 1e-5 * sum |terms|.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from diffusion_jax import diffusion, schedules

T = 1000
BETAS = schedules.get_beta_schedule("linear", num_diffusion_steps=T)
ABAR = ref.alphas_cumprod(BETAS)
ABAR_PREV = np.concatenate([[1.0], ABAR[:-1]])
SCHED = schedules.make_schedule(BETAS)
TS = np.array([0, 1, 7, 250, 500, 998, 999])
SHAPE = (len(TS), 4, 4, 3)


def _data(seed=0):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=SHAPE).astype(np.float32) for _ in range(3)]


def _col(v):
  return np.asarray(v, np.float64)[TS].reshape(-1, 1, 1, 1)


def assert_f32_close(got, want, *terms):
  """|got - want| <= 1e-5 * sum |terms| (all float64)."""
  got = np.asarray(got, np.float64)
  scale = sum(np.abs(t) for t in terms) if terms else np.abs(want)
  err = np.abs(got - want)
  assert np.all(err <= ref.F32_RTOL * scale + 1e-30), f"max excess {np.max(err - ref.F32_RTOL * scale)}"


def test_q_sample_and_q_mean_variance():
  x0, noise, _ = _data()
  a, b = np.sqrt(_col(ABAR)), np.sqrt(1 - _col(ABAR))
  got = jax.jit(diffusion.q_sample)(SCHED, x_start=x0, t=TS, noise=noise)
  assert_f32_close(got, a * x0 + b * noise, a * x0, b * noise)
  mean, var, logvar = jax.jit(diffusion.q_mean_variance)(SCHED, x_start=x0, t=TS)
  assert_f32_close(mean, a * x0)
  assert_f32_close(var, 1 - _col(ABAR))
  assert_f32_close(logvar, np.log(1 - _col(ABAR)))


def test_q_step_and_posterior_equal_bayes():
  x0, xt, noise = _data(1)
  got = jax.jit(diffusion.q_step)(SCHED, x_prev=x0, t=TS, noise=noise)
  a, b = np.sqrt(1 - _col(BETAS)), np.sqrt(_col(BETAS))
  assert_f32_close(got, a * x0 + b * noise, a * x0, b * noise)
  mean, var, logvar = jax.jit(diffusion.q_posterior_mean_variance)(SCHED, x_start=x0, x_t=xt, t=TS)
  for i, t in enumerate(TS):
    want_mean, want_var = ref.posterior_by_bayes(BETAS, x0[i].astype(np.float64), xt[i].astype(np.float64), t)
    c1 = BETAS[t] * math.sqrt(ABAR_PREV[t]) / (1 - ABAR[t])
    c2 = (1 - ABAR_PREV[t]) * math.sqrt(1 - BETAS[t]) / (1 - ABAR[t])
    assert_f32_close(mean[i], want_mean, c1 * x0[i], c2 * xt[i])
    assert_f32_close(var[i], want_var)
    clipped = ref.posterior_by_bayes(BETAS, x0[i], xt[i], max(t, 1))[1]  # log-variance clipped at t = 0
    assert_f32_close(logvar[i], np.log(clipped), np.log(clipped))


@pytest.mark.slow
def test_q_step_iterated_matches_q_sample_marginal():
  """x_0 -> q_step T times has the law N(sqrt(abar_t) x_0, 1 - abar_t) of q_sample, at every t checked."""
  n = 40_000
  x0 = jnp.repeat(jnp.array([-1.0, -0.2, 0.5, 1.0]), n)[:, None]  # (4n, 1)

  @jax.jit
  def chain(schedule, key):
    def body(x, t):
      x = diffusion.q_step(schedule, x_prev=x, t=t, noise=jax.random.normal(jax.random.fold_in(key, t), x.shape))
      return x, x
    return jax.lax.scan(body, x0, jnp.arange(T))[1]

  xs = np.asarray(chain(SCHED, jax.random.key(0)), np.float64).reshape(T, 4, n)
  direct = diffusion.q_sample(
      SCHED, x_start=x0, t=jnp.full((4 * n,), 499), noise=jax.random.normal(jax.random.key(1), x0.shape))
  direct = np.asarray(direct, np.float64).reshape(4, n)
  for t in [0, 49, 499, 999]:
    want_mean = np.sqrt(ABAR[t]) * np.array([-1.0, -0.2, 0.5, 1.0])
    want_var = 1 - ABAR[t]
    mean, var = xs[t].mean(1), xs[t].var(1, ddof=1)
    # 5 standard errors: se(mean) = sqrt(var / n), se(var) = var sqrt(2 / (n - 1)).
    np.testing.assert_array_less(np.abs(mean - want_mean), 5 * np.sqrt(want_var / n))
    np.testing.assert_array_less(np.abs(var - want_var), 5 * want_var * np.sqrt(2 / (n - 1)))
  # Two-sample check of the two routes at t = 499: means and variances agree within their joint error.
  v = 1 - ABAR[499]
  np.testing.assert_array_less(np.abs(xs[499].mean(1) - direct.mean(1)), 5 * np.sqrt(2 * v / n))
  np.testing.assert_array_less(np.abs(xs[499].var(1) - direct.var(1)), 5 * v * np.sqrt(4 / (n - 1)))


def test_predictions_and_conversions():
  xt, eps, x0 = _data(2)
  ra, rm1 = np.sqrt(1 / _col(ABAR)), np.sqrt(1 / _col(ABAR) - 1)
  got = jax.jit(diffusion.predict_xstart_from_eps)(SCHED, x_t=xt, t=TS, eps=eps)
  assert_f32_close(got, ra * xt - rm1 * eps, ra * xt, rm1 * eps)
  got = jax.jit(diffusion.predict_eps_from_xstart)(SCHED, x_t=xt, t=TS, pred_xstart=x0)
  assert_f32_close(got, (ra * xt - x0) / rm1, ra * xt / rm1, x0 / rm1)
  a, b = np.sqrt(_col(ABAR)), np.sqrt(1 - _col(ABAR))
  got = jax.jit(diffusion.v_target)(SCHED, x_start=x0, t=TS, noise=eps)
  assert_f32_close(got, a * eps - b * x0, a * eps, b * x0)
  got = jax.jit(diffusion.predict_xstart_from_v)(SCHED, x_t=xt, t=TS, v=eps)
  assert_f32_close(got, a * xt - b * eps, a * xt, b * eps)
  got = jax.jit(diffusion.score_from_eps)(SCHED, eps=eps, t=TS)
  assert_f32_close(got, -eps / b)
  got = jax.jit(diffusion.eps_from_score)(SCHED, score=got, t=TS)
  assert_f32_close(got, eps, 3 * eps)
  # Round trips: eps -> x_0 -> eps, and v of the true (x_0, eps) recovers x_0 from x_t.
  x_t = diffusion.q_sample(SCHED, x_start=x0, t=TS, noise=eps)
  v = diffusion.v_target(SCHED, x_start=x0, t=TS, noise=eps)
  np.testing.assert_allclose(diffusion.predict_xstart_from_v(SCHED, x_t=x_t, t=TS, v=v), x0, atol=2e-5)


def test_algorithm2_mean_equals_posterior_mean_route():
  """Without clipping, p_mean_variance's mean for eps models is the mean of Algorithm 2 (sampling)."""
  xt, eps, _ = _data(3)
  pmv = jax.jit(diffusion.p_mean_variance, static_argnames=("model_mean_type", "model_var_type", "clip_denoised"))
  out = pmv(SCHED, model_output=eps, x_t=xt, t=TS, model_mean_type="eps", model_var_type="fixed_large",
            clip_denoised=False)
  for i, t in enumerate(TS):
    want = ref.algorithm2_mean(BETAS, xt[i].astype(np.float64), t, eps[i].astype(np.float64))
    # The posterior route multiplies x_0 = (x_t - b eps) / a, itself ~158 x_t at large t, by coef1 ~1e-4.
    scale = (np.abs(xt[i]) + np.abs(eps[i])) * (1 + 1 / math.sqrt(ABAR[t]) + 1 / math.sqrt(1 - BETAS[t]))
    assert_f32_close(out.mean[i], want, scale)


@pytest.mark.parametrize("mean_type", ["eps", "xstart", "v"])
@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large", "learned_range"])
@pytest.mark.parametrize("clip", [False, True])
def test_p_mean_variance(mean_type, var_type, clip):
  xt, out_mean, var_raw = _data(4)
  var_values = np.tanh(var_raw)
  model_output = np.concatenate([out_mean, var_values], -1) if var_type == "learned_range" else out_mean
  fn = jax.jit(diffusion.p_mean_variance, static_argnames=("model_mean_type", "model_var_type", "clip_denoised"))
  out = fn(SCHED, model_output=model_output, x_t=xt, t=TS, model_mean_type=mean_type, model_var_type=var_type,
           clip_denoised=clip)
  x, o = xt.astype(np.float64), out_mean.astype(np.float64)
  a, b = np.sqrt(_col(ABAR)), np.sqrt(1 - _col(ABAR))
  if mean_type == "eps":
    x0 = (x - b * o) / a
  elif mean_type == "xstart":
    x0 = o
  else:
    x0 = a * x - b * o
  if clip:
    x0 = np.clip(x0, -1, 1)
  post_var = BETAS * (1 - ABAR_PREV) / (1 - ABAR)
  if var_type == "fixed_small":
    logvar = np.log(np.concatenate([[post_var[1]], post_var[1:]]))[TS].reshape(-1, 1, 1, 1) + 0 * x
  elif var_type == "fixed_large":
    logvar = np.log(np.concatenate([[post_var[1]], BETAS[1:]]))[TS].reshape(-1, 1, 1, 1) + 0 * x
  else:
    frac = (var_values.astype(np.float64) + 1) / 2
    clipped = np.log(np.concatenate([[post_var[1]], post_var[1:]]))[TS].reshape(-1, 1, 1, 1)
    logvar = frac * np.log(_col(BETAS)) + (1 - frac) * clipped
  assert out.mean.shape == out.variance.shape == out.log_variance.shape == out.pred_xstart.shape == xt.shape
  assert_f32_close(out.pred_xstart, x0, np.abs(x) / a + b / a * np.abs(o) + np.abs(x) + np.abs(o))
  assert_f32_close(out.log_variance, logvar, np.abs(logvar))
  # fixed_small's variance is beta-tilde itself (0 at t = 0); only its log is clipped.
  want_var = _col(post_var) + 0 * x if var_type == "fixed_small" else np.exp(logvar)
  assert_f32_close(out.variance, want_var, 10 * want_var)  # exp amplifies the rounding of |logvar| <= 10
  for i, t in enumerate(TS):
    want_mean, _ = ref.posterior_by_bayes(BETAS, x0[i], x[i], t)
    assert_f32_close(out.mean[i], want_mean, np.abs(x0[i]) + np.abs(x[i]) * 10 + np.abs(out.pred_xstart[i]) * 10)


@pytest.mark.parametrize("call, match", [
    (lambda x, t: diffusion.q_sample(SCHED, x_start=x, t=t.astype(jnp.float32), noise=x), "integer timestep"),
    (lambda x, t: diffusion.q_sample(SCHED, x_start=x, t=t[:2], noise=x), r"shape \(batch,\)"),
    (lambda x, t: diffusion.q_sample(SCHED, x_start=x, t=t, noise=x[:, :2]), "Shapes must match"),
    (
        lambda x, t: diffusion.p_mean_variance(SCHED, model_output=x, x_t=x, t=t, model_mean_type="score"),
        "model_mean_type 'score'"),
    (
        lambda x, t: diffusion.p_mean_variance(SCHED, model_output=x, x_t=x, t=t, model_var_type="big"),
        "model_var_type 'big'"),
    (
        lambda x, t: diffusion.p_mean_variance(SCHED, model_output=x, x_t=x, t=t, model_var_type="learned_range"),
        "twice the channels"),
    (
        lambda x, t: diffusion.predict_xstart(SCHED, model_output=x, x_t=x, t=t, model_mean_type="score"),
        "model_mean_type 'score'"),
])
def test_bad_input_raises(call, match):
  x = jnp.zeros(SHAPE)
  with pytest.raises(ValueError, match=match):
    jax.jit(call)(x, jnp.asarray(TS))


PUBLIC = {
    "q_step": lambda x, t: diffusion.q_step(SCHED, x_prev=x, t=t, noise=x),
    "q_mean_variance": lambda x, t: diffusion.q_mean_variance(SCHED, x_start=x, t=t)[0],
    "q_sample": lambda x, t: diffusion.q_sample(SCHED, x_start=x, t=t, noise=x),
    "q_posterior_mean_variance": lambda x, t: diffusion.q_posterior_mean_variance(SCHED, x_start=x, x_t=x, t=t)[0],
    "predict_xstart_from_eps": lambda x, t: diffusion.predict_xstart_from_eps(SCHED, x_t=x, t=t, eps=x),
    "predict_eps_from_xstart": lambda x, t: diffusion.predict_eps_from_xstart(SCHED, x_t=x, t=t, pred_xstart=x),
    "predict_v": lambda x, t: diffusion.v_target(SCHED, x_start=x, t=t, noise=x),
    "predict_xstart_from_v": lambda x, t: diffusion.predict_xstart_from_v(SCHED, x_t=x, t=t, v=x),
    "predict_xstart": lambda x, t: diffusion.predict_xstart(
        SCHED, model_output=x, x_t=x, t=t, model_mean_type="v", clip_denoised=False),
    "score_from_eps": lambda x, t: diffusion.score_from_eps(SCHED, eps=x, t=t),
    "eps_from_score": lambda x, t: diffusion.eps_from_score(SCHED, score=x, t=t),
    "p_mean_variance": lambda x, t: diffusion.p_mean_variance(
        SCHED, model_output=jnp.concatenate([x, jnp.tanh(x)], -1), x_t=x, t=t, model_var_type="learned_range",
        model_mean_type="v").mean,
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_jit_vmap_grad(name):
  """Each public function: jit equals eager, vmap over a leading axis equals a loop, grad is finite."""
  fn = PUBLIC[name]
  x = jnp.asarray(_data(5)[0]) * 0.3
  t = jnp.asarray(TS)
  eager = fn(x, t)
  # Fusion reorders float32 arithmetic; results are O(1) sums of terms up to ~158 at large t.
  tol = dict(rtol=1e-5, atol=2e-5)
  np.testing.assert_allclose(jax.jit(fn)(x, t), eager, **tol)
  xs = jnp.stack([x, 0.5 * x])
  vm = jax.vmap(fn, in_axes=(0, None))(xs, t)
  np.testing.assert_allclose(vm[1], fn(0.5 * x, t), **tol)
  # Per-example vmap with scalar t: the (batch,) and scalar-t paths agree.
  per_example = jax.vmap(lambda xi, ti: fn(xi[None], ti)[0])(x, t)
  np.testing.assert_allclose(per_example, eager, **tol)
  g = jax.grad(lambda x: jnp.sum(fn(x, t) ** 2))(x)
  assert g.shape == x.shape and np.all(np.isfinite(g)) and np.any(g != 0)

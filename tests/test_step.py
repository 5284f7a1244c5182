"""The training step against an independent float64 computation: the loss from its formula, Adam with warmup and
global-norm clipping written out, the EMA formula; and the timesteps it draws, by a chi-square test."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import reference as ref
from diffusion_jax import importance
from diffusion_jax.run import data, experiment
from diffusion_jax.run import step as step_lib
from helpers import tiny_config

SHAPE = (2, 2, 1)  # 4 pixels
T = 50


class Linear(nn.Module):
  """eps(x_t, t) = x_t W + b + (t / T) c on the flattened image: a model whose gradient is a closed form."""

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
    flat = x.reshape(x.shape[0], -1)
    D = flat.shape[1]
    w = self.param("w", nn.initializers.normal(0.5), (D, D))
    b = self.param("b", nn.initializers.normal(0.5), (D,))
    c = self.param("c", nn.initializers.normal(0.5), (D,))
    out = jnp.dot(flat, w, precision=jax.lax.Precision.HIGHEST) + b + (t[:, None] / T) * c
    return out.reshape(x.shape)


def _experiment(batch_size: int, steps_per_call: int = 1, model: nn.Module | None = None, **training):
  """configs/tiny.py's training on 2x2 digits, with `model` (the Linear one by default) in place of the UNet."""
  c = tiny_config("/nonexistent")
  c.model.attn_resolutions = ()
  c.model.class_conditional = getattr(model, "num_classes", None) is not None
  c.training.update(global_batch_size=batch_size, steps_per_call=steps_per_call, num_train_steps=6,
                    checkpoint_every_steps=6, log_every_steps=6, sample_every_steps=6, **training)
  exp = experiment.build(c, info=data.DatasetInfo("digits", SHAPE, 10, True))
  return dataclasses.replace(exp, model=model or Linear())


def _init(exp):
  """Step 0, jitted as the trainer makes it (params and EMA in separate buffers, both donated by the step)."""
  return jax.jit(lambda key: experiment.init_state(exp.model, exp.tx, exp.info, key))(jax.random.key(5))


def _draws(seed: int, step: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
  """The step's documented randomness: fold_in(key(seed), step) split into (t, noise, dropout) keys."""
  t_key, noise_key, _ = jax.random.split(jax.random.fold_in(jax.random.key(seed), step), 3)
  t = np.asarray(jax.random.randint(t_key, (batch,), 0, T))
  noise = np.asarray(jax.random.normal(noise_key, (batch, *SHAPE)), np.float64)
  return t, noise


def _reference_terms(p, x, step, seed, abar):
  """float64 residuals r = eps_theta(x_t, t) - eps of one step's batch, with x_t and the scaled timesteps."""
  B = len(x)
  t, eps = _draws(seed, step, B)
  x0 = x.astype(np.float64) / 127.5 - 1.0
  a = abar[t][:, None, None, None]
  x_t = (np.sqrt(a) * x0 + np.sqrt(1 - a) * eps).reshape(B, -1)
  s = t[:, None] / T
  return x_t @ p["w"] + p["b"] + s * p["c"] - eps.reshape(B, -1), x_t, s, t


def _reference_steps(params, images, cfg, seed):
  """float64: L_simple, its gradient in closed form, clip_by_global_norm, Adam with linear warmup, EMA."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  ema = dict(p)
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(v) for k, v in p.items()}
  abar = ref.alphas_cumprod(cfg.betas)
  tc = cfg.config.training
  metrics = []
  for s, x in enumerate(images):
    r, x_t, scaled_t, _ = _reference_terms(p, x, s, seed, abar)
    loss = np.mean(r**2)
    g_out = 2 * r / r.size
    grads = {"w": x_t.T @ g_out, "b": g_out.sum(0), "c": (scaled_t * g_out).sum(0)}
    norm = np.sqrt(sum(np.sum(g**2) for g in grads.values()))
    scale = min(1.0, tc.grad_clip_norm / norm)
    lr = tc.learning_rate * min(s / tc.warmup_steps, 1.0)
    for k, g in grads.items():
      g = g * scale
      m[k] = tc.adam_b1 * m[k] + (1 - tc.adam_b1) * g
      v[k] = tc.adam_b2 * v[k] + (1 - tc.adam_b2) * g**2
      m_hat, v_hat = m[k] / (1 - tc.adam_b1 ** (s + 1)), v[k] / (1 - tc.adam_b2 ** (s + 1))
      p[k] = p[k] - lr * m_hat / (np.sqrt(v_hat) + tc.adam_eps)
      ema[k] = tc.ema_decay * ema[k] + (1 - tc.ema_decay) * p[k]
    metrics.append({"loss": loss, "grad_norm": norm, "learning_rate": lr, "step": s})
  return p, ema, m, v, metrics


@pytest.mark.parametrize("steps_per_call", [1, 3])
def test_three_steps_equal_a_float64_computation(steps_per_call):
  """Parameters, EMA parameters, Adam's moments and the metrics of 3 steps (warmup over 2, clipping active)."""
  exp = _experiment(8, steps_per_call, learning_rate=0.05, warmup_steps=2, grad_clip_norm=0.3, ema_decay=0.8,
                    adam_b1=0.8, adam_b2=0.9, adam_eps=1e-3)
  state = _init(exp)
  params0 = jax.tree.map(np.asarray, state.params)
  images = np.random.default_rng(0).integers(0, 256, size=(3, 8, *SHAPE), dtype=np.uint8)
  step_fn = step_lib.make_train_step(exp, state)
  metrics = []
  for i in range(0, 3, steps_per_call):
    state, m = step_fn(state, {"x": images[i:i + steps_per_call]}, exp.schedule)
    metrics += [{k: np.asarray(v)[j] for k, v in m.items()} for j in range(steps_per_call)]
  p, ema, mu, nu, expected = _reference_steps(params0, images, exp, exp.config.seed)
  assert all(e["grad_norm"] > exp.config.training.grad_clip_norm for e in expected)  # clipping bites
  adam = state.opt_state[1][0]  # chain(clip, adam(scale_by_adam, scale_by_schedule))
  for name, ours, theirs in [("params", state.params, p), ("ema", state.ema_params, ema), ("mu", adam.mu, mu),
                             ("nu", adam.nu, nu)]:
    for k in theirs:
      np.testing.assert_allclose(ours[k], theirs[k], rtol=2e-5, atol=1e-6, err_msg=f"{name}/{k}")
  for got, want in zip(metrics, expected):
    for k, value in want.items():
      np.testing.assert_allclose(got[k], value, rtol=2e-5, err_msg=k)
    assert got["finite"]
  assert int(state.step) == 3 and int(adam.count) == 3


def test_timestep_weights_from_the_config_weight_the_loss():
  """training.timestep_weights = w gives the loss mean_b w[t_b] |eps_theta - eps|^2 / D (float64 reference)."""
  weights = tuple(np.linspace(0.0, 3.0, T))
  exp = _experiment(8, timestep_weights=weights)
  state = _init(exp)
  params = {k: np.asarray(v, np.float64) for k, v in state.params.items()}
  images = np.random.default_rng(1).integers(0, 256, size=(1, 8, *SHAPE), dtype=np.uint8)
  _, metrics = step_lib.make_train_step(exp, state)(state, {"x": images}, exp.schedule)
  r, _, _, t = _reference_terms(params, images[0], 0, exp.config.seed, ref.alphas_cumprod(exp.betas))
  expected = np.mean(np.asarray(weights)[t] * np.mean(r**2, axis=1))
  np.testing.assert_allclose(metrics["loss"][0], expected, rtol=2e-5)
  assert not np.isclose(expected, np.mean(r**2), rtol=1e-2)  # the weights change it


@pytest.mark.parametrize("weighting", ["min_snr", "p2"])
def test_loss_weighting_from_the_config_weights_the_eps_loss_as_the_papers(weighting):
  """training.loss_weighting on eps: mean_b w[t_b] |eps_theta - eps|^2 / D with w = min(SNR, 5) / SNR (Hang et al.)
  or 1 / (1 + SNR) (Choi et al.), float64 written here."""
  exp = _experiment(8, loss_weighting=weighting)
  state = _init(exp)
  params = {k: np.asarray(v, np.float64) for k, v in state.params.items()}
  images = np.random.default_rng(1).integers(0, 256, size=(1, 8, *SHAPE), dtype=np.uint8)
  _, metrics = step_lib.make_train_step(exp, state)(state, {"x": images}, exp.schedule)
  abar = ref.alphas_cumprod(exp.betas)
  r, _, _, t = _reference_terms(params, images[0], 0, exp.config.seed, abar)
  snr = abar / (1 - abar)
  w = np.minimum(snr, 5.0) / snr if weighting == "min_snr" else 1.0 / (1.0 + snr)
  np.testing.assert_allclose(metrics["loss"][0], np.mean(w[t] * np.mean(r**2, axis=1)), rtol=2e-5)


def test_an_importance_sampled_step_weights_each_loss_by_one_over_T_p_and_records_it():
  """With a full history, t ~ p (drawn with the step's t key, p in float64 here: the root mean square of each t's
  losses, 0.1% uniform) and the loss is mean_b |r_b|^2 / D / (T p_{t_b}); each unweighted loss joins its t's row."""
  exp = _experiment(8, timestep_sampler="importance")
  state = jax.jit(lambda key: experiment.init_state(exp.model, exp.tx, exp.info, key, history_steps=T))(
      jax.random.key(5))
  rows = np.random.default_rng(2).uniform(0.1, 3.0, (T, importance.HISTORY)).astype(np.float32)
  state = state.replace(loss_history=importance.LossHistory(jnp.asarray(rows), jnp.full((T,), importance.HISTORY)))
  params = {k: np.asarray(v, np.float64) for k, v in state.params.items()}
  images = np.random.default_rng(1).integers(0, 256, size=(1, 8, *SHAPE), dtype=np.uint8)
  new, metrics = step_lib.make_train_step(exp, state)(state, {"x": images}, exp.schedule)
  rms = np.sqrt(np.mean(rows.astype(np.float64) ** 2, axis=1))
  p = (1 - 1e-3) * rms / rms.sum() + 1e-3 / T
  t_key, noise_key, _ = jax.random.split(jax.random.fold_in(jax.random.key(exp.config.seed), 0), 3)
  t = np.asarray(jax.random.choice(t_key, T, (8,), p=jnp.asarray(p, jnp.float32)))
  eps = np.asarray(jax.random.normal(noise_key, (8, *SHAPE)), np.float64)
  a = ref.alphas_cumprod(exp.betas)[t][:, None, None, None]
  x_t = (np.sqrt(a) * (images[0] / 127.5 - 1.0) + np.sqrt(1 - a) * eps).reshape(8, -1)
  per_example = np.mean((x_t @ params["w"] + params["b"] + t[:, None] / T * params["c"] - eps.reshape(8, -1)) ** 2, 1)
  np.testing.assert_allclose(metrics["loss"][0], np.mean(per_example / (T * p[t])), rtol=2e-5)
  history = np.asarray(new.loss_history.losses)
  for ti in np.unique(t):  # the row's newest entries are this batch's losses at ti, in the batch's order
    mine = per_example[t == ti]
    np.testing.assert_allclose(history[ti, -len(mine):], mine, rtol=2e-5)
    np.testing.assert_array_equal(history[ti, :-len(mine)], rows[ti, len(mine):])


class _Recorder(nn.Module):
  """Zero output; sends every timestep it is called with to the host."""

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
    jax.debug.callback(lambda t: _Recorder.seen.append(np.asarray(t)), t)
    return x * self.param("s", nn.initializers.zeros, ())


_Recorder.seen = []


def test_timesteps_drawn_by_the_step_are_uniform_over_every_t():
  """A chi-square test over all T bins of the timesteps the network sees (n = 12,800 draws in 2 steps)."""
  exp = _experiment(6400, 2, _Recorder())
  state = _init(exp)
  _Recorder.seen.clear()  # of the init's call
  images = np.zeros((2, 6400, *SHAPE), np.uint8)
  jax.block_until_ready(step_lib.make_train_step(exp, state)(state, {"x": images}, exp.schedule))
  t = np.concatenate(_Recorder.seen)
  assert t.shape == (12_800,) and t.min() >= 0 and t.max() < T
  counts = np.bincount(t, minlength=T)
  assert scipy.stats.chisquare(counts).pvalue > 1e-3, counts


class _LabelRecorder(nn.Module):
  """A class-conditional network with zero output that sends the labels it is called with to the host."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None, train: bool = False) -> jax.Array:
    if y is not None:
      jax.debug.callback(lambda y: _LabelRecorder.seen.append(np.asarray(y)), y)
    return x * self.param("s", nn.initializers.zeros, ())


_LabelRecorder.seen = []


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_label_dropout_gives_the_null_label_at_its_rate_and_keeps_the_others(rate):
  """A binomial test of the null labels the network sees among n = 12,800 (2 steps of 6400); every other label
  is the batch's own."""
  exp = _experiment(6400, 2, _LabelRecorder(), label_dropout=rate)
  state = _init(exp)
  _LabelRecorder.seen.clear()
  labels = np.arange(2 * 6400).reshape(2, 6400) % 10
  batch = {"x": np.zeros((2, 6400, *SHAPE), np.uint8), "label": labels}
  jax.block_until_ready(step_lib.make_train_step(exp, state)(state, batch, exp.schedule))
  seen = np.stack(_LabelRecorder.seen)
  assert seen.shape == (2, 6400)
  dropped = seen == 10
  assert scipy.stats.binomtest(int(dropped.sum()), dropped.size, rate).pvalue > 1e-3, dropped.mean()
  np.testing.assert_array_equal(seen[~dropped], labels[~dropped])

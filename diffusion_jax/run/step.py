"""The training step: one jitted, data-parallel program of `steps_per_call` optimizer steps.

`train_step(state, batch, schedule)` runs over the device mesh with the batch
sharded along `'data'` and the state replicated and donated. The batch always
has a leading steps axis (`training.steps_per_call`, 1 by default), scanned
over, so one compiled call can amortise dispatch over several steps. Per-step
randomness is `fold_in(key(seed), step)` (split into the timesteps', the noise's
and dropout's keys; folded with 3 for label dropout), generated for the global
batch inside the program, so a run's result depends on the config and seed, not on the
number of devices or hosts.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from diffusion_jax import importance, losses, schedules
from diffusion_jax.run import compiler, data, parallel
from diffusion_jax.run.experiment import Experiment, TrainState, learning_rate_fn, model_fn, num_classes


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """The static (hashable) part of the training step."""

  seed: int
  model_mean_type: str
  model_var_type: str
  ema_decay: float
  skip_nonfinite: bool
  timestep_weights: tuple[float, ...] | None = None
  num_classes: int | None = None  # class-conditional: K, also the null label
  label_dropout: float = 0.0
  importance_sampling: bool = False  # t from the state's loss history (importance.sample), not uniform

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, betas: np.ndarray,
                  num_classes: int | None = None) -> StepConfig:
    """The step of `config` and its float64 `betas`; `num_classes` is the model's (None: unconditional)."""
    tc = config.training
    weights = tc.timestep_weights
    if tc.loss_weighting != "uniform":
      weights = losses.loss_weights(
          betas, weighting=tc.loss_weighting, model_mean_type=config.diffusion.model_mean_type,
          min_snr_gamma=tc.min_snr_gamma, p2_k=tc.p2_k, p2_gamma=tc.p2_gamma)
    return cls(config.seed, config.diffusion.model_mean_type, config.diffusion.model_var_type,
               float(tc.ema_decay), tc.on_nonfinite == "skip",
               None if weights is None else tuple(float(w) for w in weights), num_classes,
               float(tc.label_dropout) if num_classes is not None else 0.0, tc.timestep_sampler == "importance")


def drop_labels(labels: jax.Array, key: jax.Array, rate: float, null_label: int) -> jax.Array:
  """Each label replaced by `null_label` with probability `rate`, independently (classifier-free guidance)."""
  return jnp.where(jax.random.bernoulli(key, rate, labels.shape), null_label, labels)


def _one_step(state: TrainState, batch: dict[str, jax.Array], schedule: schedules.DiffusionSchedule, *,
              model: nn.Module, tx: optax.GradientTransformation, lr_fn: optax.Schedule,
              cfg: StepConfig) -> tuple[TrainState, dict[str, jax.Array]]:
  x_start = data.to_model_input(batch["x"])
  key = jax.random.fold_in(jax.random.key(cfg.seed), state.step)
  t_key, noise_key, dropout_key = jax.random.split(key, 3)
  if cfg.importance_sampling:  # weighted by 1 / (T p_t): the same expected loss as uniform t
    t, sample_weights = importance.sample(t_key, state.loss_history, x_start.shape[0])
  else:
    t, sample_weights = jax.random.randint(t_key, x_start.shape[:1], 0, schedule.num_diffusion_steps), None
  noise = jax.random.normal(noise_key, x_start.shape)
  weights = None if cfg.timestep_weights is None else jnp.asarray(cfg.timestep_weights, jnp.float32)
  labels = None
  if cfg.num_classes is not None:  # the labels' stream: the step key folded with 3
    labels = drop_labels(batch["label"], jax.random.fold_in(key, 3), cfg.label_dropout, cfg.num_classes)

  def loss_fn(params: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    terms = losses.training_losses(
        schedule, model_fn=model_fn(model, params, train=True, dropout_key=dropout_key, labels=labels), x_start=x_start,
        t=t, noise=noise, model_mean_type=cfg.model_mean_type, model_var_type=cfg.model_var_type,
        timestep_weights=weights)
    per_example = terms["loss"] if sample_weights is None else terms["loss"] * sample_weights
    return jnp.mean(per_example), terms

  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  def update(state: TrainState) -> TrainState:
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = optax.incremental_update(params, state.ema_params, 1.0 - cfg.ema_decay)
    history = (importance.update(state.loss_history, t, terms["loss"]) if cfg.importance_sampling
               else state.loss_history)
    return state.replace(step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state,
                         loss_history=history)

  def keep(state: TrainState) -> TrainState:
    if cfg.skip_nonfinite:
      return state.replace(step=state.step + 1, skipped_steps=state.skipped_steps + 1)
    return state

  # A non-finite update never reaches the state: skipped (step advances), or the state stays as it was
  # for the host to stop on. A branch, not a select of both states: the donated buffers are then updated
  # in place, without a copy of every parameter and moment per step.
  new_state = jax.lax.cond(finite, update, keep, state)
  metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": lr_fn(state.step), "finite": finite,
             "step": state.step, **{f"loss_{k}": jnp.mean(v) for k, v in terms.items() if k != "loss"}}
  return new_state, metrics


def train_step(state: TrainState, batch: dict[str, jax.Array], schedule: schedules.DiffusionSchedule, *,
               model: nn.Module, tx: optax.GradientTransformation, lr_fn: optax.Schedule,
               cfg: StepConfig) -> tuple[TrainState, dict[str, jax.Array]]:
  """k optimizer steps, scanned: eps-MSE (or L_hybrid), Adam, EMA.

  Args:
    state: the current state.
    batch: `x` of shape `(k, batch, ...)`: the batches of k consecutive steps.
    schedule: the diffusion process (an argument, not a compiled-in constant).
    model, tx, lr_fn, cfg: static parts, bound with `functools.partial`.

  Returns:
    (new state, metrics); each metric has shape `(k,)`.
  """
  step = functools.partial(_one_step, schedule=schedule, model=model, tx=tx, lr_fn=lr_fn, cfg=cfg)
  if jax.default_backend() != "cpu":
    return jax.lax.scan(step, state, batch)
  # XLA:CPU does not bring the weight-gradient convolutions inside a while loop (even one of a single
  # trip, which `lax.scan` emits also when fully unrolled) into the layout of its library kernels: they
  # would run on its naive emitter, many times slower (figures: BENCHMARKS.md). Unrolled by hand, k steps compile like
  # one (compile time grows with k).
  metrics = []
  for i in range(jax.tree.leaves(batch)[0].shape[0]):
    state, m = step(state, {key: value[i] for key, value in batch.items()})
    metrics.append(m)
  return state, jax.tree.map(lambda *ms: jnp.stack(ms), *metrics)


def make_train_step(exp: Experiment, state: TrainState) -> Any:
  """`train_step` for `exp`, jitted over its mesh: (state, batch, schedule) -> (state, metrics), state donated."""
  state_sharding = jax.tree.map(lambda a: a.sharding, state)
  return compiler.jit(
      functools.partial(train_step, model=exp.model, tx=exp.tx, lr_fn=learning_rate_fn(exp.config),
                        cfg=StepConfig.from_config(exp.config, exp.betas, num_classes(exp))),
      in_shardings=(state_sharding, parallel.batch_sharding(exp.mesh, 1), parallel.replicated(exp.mesh)),
      out_shardings=(state_sharding, parallel.replicated(exp.mesh)), donate_argnums=0)

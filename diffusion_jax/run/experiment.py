"""Building an experiment from a validated config: `build(config)` -> `Experiment`.

`build` validates the config and makes everything a run needs before anything
compiles, each value once: the dataset's shape, the model, the float64 betas and
the schedule, the optimizer, the device mesh and the label layout. The training
loop (`train`) and the sample, eval and export modes (`modes`) all start from it;
`trained.load(workdir)` rebuilds a trained run with it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from diffusion_jax import diffusion, importance, sampling, schedules
from diffusion_jax.models.mlp import MLPDenoiser
from diffusion_jax.models.unet import UNet
from diffusion_jax.run import config as config_lib
from diffusion_jax.run import data, parallel
from diffusion_jax.run.checkpoint import Checkpointer
from diffusion_jax.run.labels import LabelLayout, label_layout


class TrainState(flax.struct.PyTreeNode):
  """Everything a resumed run needs; `step` is also the data position."""

  step: jax.Array  # int32 scalar: optimizer steps taken (and batches consumed)
  params: Any
  ema_params: Any
  opt_state: optax.OptState
  skipped_steps: jax.Array  # int32 scalar: non-finite updates skipped
  loss_history: importance.LossHistory | None = None  # training.timestep_sampler = 'importance'


def build_model(config: ml_collections.ConfigDict, info: data.DatasetInfo) -> nn.Module:
  """The denoiser of `config.model` for data of `info.shape`; raises `ValueError` if they do not fit."""
  channels = info.shape[-1]
  out = 2 * channels if config.diffusion.model_var_type == "learned_range" else None
  if config.model.name == "mlp":
    return MLPDenoiser(hidden=config.model.hidden, num_layers=config.model.num_layers, out_dim=out)
  if config.model.class_conditional and not info.num_classes:
    raise ValueError(f"model.class_conditional = True needs labels, and data.dataset = {info.name!r} has none; "
                     "use a labelled dataset (digits, mnist, fashion_mnist, cifar10).")
  model = UNet(
      ch=config.model.ch, ch_mult=tuple(config.model.ch_mult), num_res_blocks=config.model.num_res_blocks,
      attn_resolutions=tuple(config.model.attn_resolutions), dropout=config.model.dropout, out_channels=out,
      num_classes=info.num_classes if config.model.class_conditional else None,
      num_groups=config.model.num_groups, dtype=jnp.dtype(config.training.compute_dtype),
      remat=config.model.remat)
  model.check(info.shape)
  return model


def learning_rate_fn(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from 0 to `training.learning_rate` over `warmup_steps`, then constant (`training.lr_decay =
  'constant'`) or lr (1 + cos(pi (s - warmup) / (num_train_steps - warmup))) / 2 down to 0 at the last step
  (`'cosine'`, Loshchilov & Hutter 2017)."""
  tc = config.training
  lr, warmup = tc.learning_rate, tc.warmup_steps
  after = (optax.constant_schedule(lr) if tc.lr_decay == "constant"
           else optax.cosine_decay_schedule(lr, max(tc.num_train_steps - warmup, 1)))
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with the warmup schedule, after global-norm clipping (when `grad_clip_norm` > 0)."""
  adam = optax.adam(learning_rate_fn(config), b1=config.training.adam_b1, b2=config.training.adam_b2,
                    eps=config.training.adam_eps)
  if config.training.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.training.grad_clip_norm), adam)
  return adam


def init_state(model: nn.Module, tx: optax.GradientTransformation, info: data.DatasetInfo,
               key: jax.Array, params: Any | None = None, history_steps: int | None = None) -> TrainState:
  """Step 0: fresh parameters from `key` (or the given `params`), EMA = parameters, fresh optimizer state, and an
  empty loss history of `history_steps` timesteps for the importance sampler (None: uniform t, no history)."""
  if params is None:
    x, t = jnp.zeros((1, *info.shape), jnp.float32), jnp.zeros((1,), jnp.int32)
    params = model.init({"params": key}, x, t)["params"]
  history = None if history_steps is None else importance.init_history(history_steps)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                    opt_state=tx.init(params), skipped_steps=jnp.zeros((), jnp.int32), loss_history=history)


def history_steps(config: ml_collections.ConfigDict) -> int | None:
  """T where `training.timestep_sampler` is 'importance' (the state keeps a loss history per t), else None."""
  return config.diffusion.num_diffusion_steps if config.training.timestep_sampler == "importance" else None


def sampling_params(state: TrainState, config: ml_collections.ConfigDict) -> Any:
  """The EMA parameters if `config.sampling.use_ema` (the default), else the raw ones."""
  return state.ema_params if config.sampling.use_ema else state.params


def model_fn(model: nn.Module, params: Any, *, train: bool = False, dropout_key: jax.Array | None = None,
             labels: jax.Array | None = None) -> diffusion.ModelFn:
  """`(x_t, t) -> model output` for the diffusion functions (class-conditional on `labels` when given)."""
  rngs = {"dropout": dropout_key} if train else None
  if labels is None:
    return lambda x, t: model.apply({"params": params}, x, t, train=train, rngs=rngs)
  return lambda x, t: model.apply({"params": params}, x, t, labels, train=train, rngs=rngs)


def labelled_model_fn(model: nn.Module, params: Any) -> sampling.LabelledModelFn:
  """`(x_t, t, labels) -> output` of a class-conditional model, for `sampling.classifier_free_guidance`."""
  return lambda x, t, y: model.apply({"params": params}, x, t, y)


def num_classes(exp: Experiment) -> int | None:
  """K of a class-conditional model (its null label), None for an unconditional one: read off the label layout."""
  return None if exp.labels is None else exp.labels.num_classes


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything built from a validated config, before any compilation."""

  config: ml_collections.ConfigDict
  info: data.DatasetInfo
  model: nn.Module
  betas: np.ndarray  # float64, shape (T,)
  schedule: schedules.DiffusionSchedule
  tx: optax.GradientTransformation
  mesh: jax.sharding.Mesh
  labels: LabelLayout | None  # a class-conditional model's classes to draw; None for an unconditional one


def build(config: ml_collections.ConfigDict, workdir: str | None = None,
          info: data.DatasetInfo | None = None) -> Experiment:
  """Validates `config` (and `workdir`) and builds the experiment; nothing is compiled or written.

  Args:
    config: the experiment config (`configs/*.py`).
    workdir: checked to be writable, when given.
    info: the dataset's description; read from the data when None.

  Returns:
    The `Experiment`.

  Raises:
    ValueError / FileNotFoundError: a bad config key, workdir or dataset, or a model that does not fit it.
  """
  betas = config_lib.validate_config(config)
  if workdir is not None:
    config_lib.check_workdir_writable(workdir)
  info = data.dataset_info(config) if info is None else info
  model = build_model(config, info)
  for key in ["training.global_batch_size", "sampling.preview_samples", "sampling.batch_size"]:
    data.check_batch_divisibility(config_lib.get(config, key), key)
  K = getattr(model, "num_classes", None)
  labels = None if K is None else label_layout(config.sampling.labels, K, info.name)
  return Experiment(config, info, model, betas, schedules.make_schedule(betas), build_optimizer(config),
                    parallel.make_mesh(), labels)


def abstract_state(exp: Experiment) -> TrainState:
  """Shapes, dtypes and (replicated) shardings of the state, without computing it."""
  shapes = jax.eval_shape(functools.partial(init_state, exp.model, exp.tx, exp.info,
                                            history_steps=history_steps(exp.config)), jax.random.key(exp.config.seed))
  sharding = parallel.replicated(exp.mesh)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), shapes)


def restore_latest(exp: Experiment, workdir: str) -> tuple[TrainState, int]:
  """The latest complete checkpoint of `workdir`, read-only; `FileNotFoundError` if there is none."""
  ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
  ckpt = (Checkpointer(workdir, read_only=True, on_corrupt=exp.config.training.on_corrupt_checkpoint)
          if os.path.isdir(ckpt_dir) else None)
  step = None if ckpt is None else ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"No complete checkpoint in {ckpt_dir}: train first with "
                            f"--mode train --workdir {workdir}.")
  state, _ = ckpt.restore(abstract_state(exp))
  ckpt.close()
  return state, step



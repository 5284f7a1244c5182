"""Building an experiment from a validated config, and loading a trained workdir.

`build(config)` validates the config and makes everything a run needs before
anything compiles: the dataset's shape, the model, the float64 betas and the
schedule, the optimizer, the device mesh. The training loop (`train.py`) and
the sample and eval modes (`evaluate.py`) both start from it.

For research code, `load(workdir)` returns a trained run (model, parameters,
EMA parameters, schedule) and `Run.sample` draws from it:

    run = load("workdirs/digits")
    samples = run.sample(16, jax.random.key(0))  # (16, 8, 8, 1) in [-1, 1]
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from diffusion_jax import compiler, data, diffusion, parallel, pretrained, sampling, schedules
from diffusion_jax import config as config_lib
from diffusion_jax.checkpoint import Checkpointer
from diffusion_jax.checks import ProgressFn
from diffusion_jax.logs import Progress
from diffusion_jax.models.mlp import MLPDenoiser
from diffusion_jax.models.unet import UNet


class TrainState(flax.struct.PyTreeNode):
  """Everything a resumed run needs; `step` is also the data position."""

  step: jax.Array  # int32 scalar: optimizer steps taken (and batches consumed)
  params: Any
  ema_params: Any
  opt_state: optax.OptState
  skipped_steps: jax.Array  # int32 scalar: non-finite updates skipped


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
  """Linear warmup from 0 to `training.learning_rate` over `warmup_steps`, then constant."""
  lr, warmup = config.training.learning_rate, config.training.warmup_steps
  if warmup == 0:
    return optax.constant_schedule(lr)
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with the warmup schedule, after global-norm clipping (when `grad_clip_norm` > 0)."""
  adam = optax.adam(learning_rate_fn(config), b1=config.training.adam_b1, b2=config.training.adam_b2,
                    eps=config.training.adam_eps)
  if config.training.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.training.grad_clip_norm), adam)
  return adam


def init_state(model: nn.Module, tx: optax.GradientTransformation, info: data.DatasetInfo,
               key: jax.Array, params: Any | None = None) -> TrainState:
  """Step 0: fresh parameters from `key` (or the given `params`), EMA = parameters, fresh optimizer state."""
  if params is None:
    x, t = jnp.zeros((1, *info.shape), jnp.float32), jnp.zeros((1,), jnp.int32)
    params = model.init({"params": key}, x, t)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                    opt_state=tx.init(params), skipped_steps=jnp.zeros((), jnp.int32))


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
  """K of a class-conditional model (its null label), None for an unconditional one."""
  return getattr(exp.model, "num_classes", None)


def sample_labels(exp: Experiment, num_samples: int) -> tuple[np.ndarray, int]:
  """The labels of `--mode sample` and the previews per `sampling.labels`, and the grid's columns.

  Returns:
    (int32 labels of shape (n,), columns): each label of "all" (every class) or of the list in turn fills
    a row of `columns = max(1, num_samples // number of labels)` samples; n = rows * columns.

  Raises:
    ValueError: a label outside [0, K).
  """
  K = num_classes(exp)
  chosen = config_lib.parse_labels(exp.config.sampling.labels)
  chosen = np.arange(K) if chosen is None else np.asarray(chosen)
  if chosen.max() >= K:
    raise ValueError(f"sampling.labels = {exp.config.sampling.labels!r} has labels outside [0, {K}): "
                     f"data.dataset = {exp.info.name!r} has {K} classes.")
  columns = max(1, num_samples // len(chosen))
  return np.repeat(chosen, columns).astype(np.int32), columns


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
  config_lib.validate_config(config)
  if workdir is not None:
    config_lib.check_workdir_writable(workdir)
  info = data.dataset_info(config) if info is None else info
  model = build_model(config, info)
  for key in ["training.global_batch_size", "sampling.preview_samples", "sampling.batch_size"]:
    data.check_batch_divisibility(config_lib.get(config, key), key)
  betas = config_lib.make_betas(config)
  exp = Experiment(config, info, model, betas, schedules.make_schedule(betas), build_optimizer(config),
                   parallel.make_mesh())
  if num_classes(exp) is not None:
    sample_labels(exp, 1)  # labels outside the data's classes fail here, before anything compiles
  return exp


def abstract_state(exp: Experiment) -> TrainState:
  """Shapes, dtypes and (replicated) shardings of the state, without computing it."""
  shapes = jax.eval_shape(functools.partial(init_state, exp.model, exp.tx, exp.info),
                          jax.random.key(exp.config.seed))
  sharding = parallel.replicated(exp.mesh)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), shapes)


def restore_latest(exp: Experiment, workdir: str) -> tuple[TrainState, int]:
  """The latest complete checkpoint of `workdir`, read-only; `FileNotFoundError` if there is none."""
  ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
  ckpt = Checkpointer(workdir, read_only=True) if os.path.isdir(ckpt_dir) else None
  step = None if ckpt is None else ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"No complete checkpoint in {ckpt_dir}: train first with "
                            f"--mode train --workdir {workdir}.")
  state, _ = ckpt.restore(abstract_state(exp))
  ckpt.close()
  return state, step


def pretrained_info(config: ml_collections.ConfigDict) -> data.DatasetInfo:
  """The images (and classes) `config.pretrained` takes, described without reading `config.data.dataset`."""
  model, shape = pretrained.read_layout(config.pretrained)
  return data.DatasetInfo(config.data.dataset, shape, model.num_classes, True)


def _mismatches(exp: Experiment, loaded: pretrained.Pretrained) -> list[str]:
  """What differs between the experiment and a pretrained checkpoint, each as `key: ours vs theirs`.

  The fixed variances (beta_t or beta-tilde_t) are a sampling choice, free whatever the scheduler file says;
  a learned one is part of the network.
  """
  out = []
  if tuple(exp.info.shape) != loaded.image_shape:
    out.append(f"data.dataset {exp.config.data.dataset!r} has images of shape {tuple(exp.info.shape)}, the "
               f"checkpoint takes {loaded.image_shape}")
  for name in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "num_groups"):
    ours, theirs = getattr(exp.model, name), getattr(loaded.model, name)
    if tuple(np.atleast_1d(ours)) != tuple(np.atleast_1d(theirs)):
      out.append(f"model.{name} = {ours!r}, the checkpoint's is {theirs!r}")
  if exp.model.num_classes != loaded.model.num_classes:
    out.append(f"the model has num_classes = {exp.model.num_classes}, the checkpoint {loaded.model.num_classes}")
  dc = exp.config.diffusion
  learned = "learned_range" in (dc.model_var_type, loaded.config["diffusion.model_var_type"])
  for key in ("num_diffusion_steps", "model_mean_type") + (("model_var_type",) if learned else ()):
    if dc[key] != loaded.config[f"diffusion.{key}"]:
      out.append(f"diffusion.{key} = {dc[key]!r}, the checkpoint's is {loaded.config[f'diffusion.{key}']!r}")
  theirs = pretrained.betas(loaded.config)
  if not out and not np.allclose(exp.betas, theirs, rtol=1e-6, atol=0):
    out.append(f"diffusion.beta_schedule {dc.beta_schedule!r} with beta_kwargs {config_lib.beta_kwargs(exp.config)} "
               f"gives betas {exp.betas[0]:.6g}..{exp.betas[-1]:.6g}; the checkpoint's are "
               f"{loaded.config['diffusion.beta_schedule']!r}, {theirs[0]:.6g}..{theirs[-1]:.6g}")
  return out


def load_pretrained(exp: Experiment) -> Any:
  """The parameters of the diffusers-format directory `config.pretrained`, placed on the mesh (replicated).

  Raises:
    FileNotFoundError / ValueError: a missing file, an unsupported layout or tensor (see
      `pretrained.load`), or a checkpoint whose layout or schedule is not the config's (each difference named).
  """
  loaded = pretrained.load(exp.config.pretrained)
  check_pretrained(exp, loaded)
  return jax.device_put(loaded.params, parallel.replicated(exp.mesh))


def check_pretrained(exp: Experiment, loaded: pretrained.Pretrained) -> None:
  """Raises `ValueError` naming every difference of layout, image shape or schedule between the two."""
  problems = _mismatches(exp, loaded)
  if problems:
    raise ValueError(f"pretrained = {exp.config.pretrained!r} does not match the config: {'; '.join(problems)}. "
                     "Set those keys to the checkpoint's (configs/ddpm_*.py are made for the published models).")


def export_pretrained(exp: Experiment, params: Any, directory: str) -> None:
  """Writes `params` of the experiment's UNet as a diffusers-format directory (see `pretrained.save`).

  Raises:
    ValueError: the model is not a UNet (diffusers has no such 2-D point denoiser).
  """
  if not isinstance(exp.model, UNet):
    raise ValueError(f"model.name = {exp.config.model.name!r} cannot be exported: diffusers' UNet2DModel is a UNet.")
  keys = {f"diffusion.{k}": exp.config.diffusion[k] for k in
          ("num_diffusion_steps", "beta_schedule", "model_mean_type", "model_var_type")}
  keys.update({f"diffusion.beta_kwargs.{k}": v for k, v in config_lib.beta_kwargs(exp.config).items()})
  keys["sampling.clip_denoised"] = exp.config.sampling.clip_denoised
  pretrained.save(directory, jax.device_get(params), exp.model, tuple(exp.info.shape), keys, exp.betas)


def make_sampler(exp: Experiment, batch_size: int, progress: ProgressFn | None = None,
                 guidance_scale: float | None = None) -> Callable[..., jax.Array]:
  """jit(params, key[, labels]) -> samples of shape `(batch_size, *shape)`, sharded over the mesh, per
  `config.sampling`.

  Args:
    exp: the experiment.
    batch_size: samples per call; divisible by the number of devices.
    progress: host function the compiled chain reports its steps done to (`logs.Progress`).
    guidance_scale: a class-conditional model's w; `sampling.guidance_scale` when None.

  Returns:
    The sampler; samples are in [-1, 1] for images (clipped x_0 predictions) or points. A
    class-conditional model's sampler takes int labels of shape `(batch_size,)`.
  """
  sharding = parallel.batch_sharding(exp.mesh)
  shape = (batch_size, *exp.info.shape)
  sc, dc = exp.config.sampling, exp.config.diffusion
  clip = sc.clip_denoised and exp.info.is_image
  timesteps = sampling_timesteps(exp)
  steps: schedules.DiffusionSchedule | sampling.SolverTable = exp.schedule
  if sc.sampler == "ancestral" and len(timesteps) != exp.schedule.num_steps:
    steps = schedules.respace(exp.betas, timesteps[::-1])
  elif sc.sampler in sampling.SOLVERS:
    steps = sampling.solver_table(exp.betas, timesteps, solver=sc.sampler, order=sc.order)
  K = num_classes(exp)
  w = sc.guidance_scale if guidance_scale is None else guidance_scale

  def draw(params: Any, steps: schedules.DiffusionSchedule | sampling.SolverTable, key: jax.Array,
           labels: jax.Array | None) -> jax.Array:
    if K is None:
      fn = model_fn(exp.model, params)
    else:
      fn = sampling.classifier_free_guidance(labelled_model_fn(exp.model, params), labels, K, w,
                                             learned_variance=dc.model_var_type == "learned_range")
    common = dict(model_mean_type=dc.model_mean_type, clip_denoised=clip, sharding=sharding, progress=progress)
    if sc.sampler == "ddim":
      return sampling.ddim_sample(fn, steps, shape, key, timesteps=timesteps, eta=sc.eta, **common)
    if sc.sampler in sampling.SOLVERS:
      return sampling.solver_sample(fn, steps, shape, key, **common)
    return sampling.sample(fn, steps, shape, key, model_var_type=dc.model_var_type, **common)

  jitted = compiler.jit(draw, out_shardings=sharding)

  def sampler(params: Any, key: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    if (labels is None) != (K is None):
      raise ValueError("a class-conditional model samples with labels (shape (batch,)), an unconditional one "
                       f"without; this model has num_classes = {K}, labels = {labels}.")
    if labels is not None:
      labels = jnp.asarray(labels, jnp.int32)
      if labels.shape != (batch_size,) or int(labels.min()) < 0 or int(labels.max()) > K:
        raise ValueError(f"labels must be ints in [0, {K}] (K = {K} is the null label) of shape ({batch_size},).")
      labels = jax.device_put(labels, sharding)
    return jitted(params, steps, key, labels)
  return sampler


def sampling_steps(config: ml_collections.ConfigDict) -> int:
  """Network calls per sample under `config.sampling`."""
  return config.sampling.num_steps or config.diffusion.num_diffusion_steps


def sampling_timesteps(exp: Experiment) -> np.ndarray:
  """The timesteps `config.sampling` visits (`num_steps` of `spacing`), first step first."""
  return schedules.sampling_timesteps(exp.betas, sampling_steps(exp.config), exp.config.sampling.spacing)


def describe_sampler(config: ml_collections.ConfigDict) -> str:
  """`config.sampling`'s sampler in words, e.g. `unipc (order 2), 20 logsnr steps`."""
  sc = config.sampling
  order = f" (order {sc.order})" if sc.sampler in sampling.SOLVERS else ""
  return f"{sc.sampler}{order}, {sampling_steps(config)} {sc.spacing} steps"


class Sampler:
  """Draws any number of samples in batches of one compiled sampler, with progress lines.

  Batch `b` uses `fold_in(key, b)`, so the samples do not depend on the number of devices.
  """

  def __init__(self, exp: Experiment, batch_size: int, guidance_scale: float | None = None):
    """Compiles (on first use) the sampler of `exp.config.sampling` for batches of `batch_size` (and guidance w)."""
    data.check_batch_divisibility(batch_size, "batch_size")
    self.batch_size = batch_size
    self.steps = sampling_steps(exp.config)
    self.num_classes = num_classes(exp)
    self.progress = Progress()
    self._draw = make_sampler(exp, batch_size, self.progress, guidance_scale)

  def __call__(self, params: Any, num_samples: int, key: jax.Array, label: str = "sampling",
               labels: np.ndarray | None = None) -> np.ndarray:
    """`num_samples` samples as float32 numpy of shape `(num_samples, *info.shape)`, on every host.

    Args:
      params: the parameters to sample with (e.g. the EMA parameters).
      num_samples: how many.
      key: PRNG key.
      label: what the progress lines call this.
      labels: a class-conditional model's class of each sample, shape `(num_samples,)`; None: every class
        in turn (0, 1, ..., K-1, 0, ...).
    """
    if self.num_classes is not None and labels is None:
      labels = np.arange(num_samples) % self.num_classes
    num_batches = -(-num_samples // self.batch_size)
    if labels is not None:  # the last batch is filled up with the last label
      labels = np.asarray(labels, np.int32)
      if labels.shape != (num_samples,):
        raise ValueError(f"labels must have shape ({num_samples},), got {labels.shape}.")
      labels = np.pad(labels, (0, num_batches * self.batch_size - num_samples), mode="edge")
    self.progress.start(f"{label} ({num_samples} samples, {self.steps} steps each)", num_batches * self.steps)
    out = []
    for b in range(num_batches):
      self.progress.offset = b * self.steps
      y = None if labels is None else labels[b * self.batch_size:(b + 1) * self.batch_size]
      out.append(parallel.gather(self._draw(params, jax.random.fold_in(key, b), y)))
    return np.concatenate(out)[:num_samples]


def write_dataset_info(info: data.DatasetInfo, workdir: str) -> None:
  """`workdir/dataset_info.json`: what `load` needs to rebuild the model without the data."""
  with open(os.path.join(workdir, "dataset_info.json"), "w") as f:
    json.dump(dataclasses.asdict(info), f, indent=2)


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained workdir in memory: the experiment, its latest checkpoint's state and step."""

  experiment: Experiment
  state: TrainState
  step: int

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.experiment.config

  @property
  def model(self) -> nn.Module:
    return self.experiment.model

  @property
  def schedule(self) -> schedules.DiffusionSchedule:
    return self.experiment.schedule

  @property
  def params(self) -> Any:
    """The parameters sampling uses: `sampling_params(state, config)`."""
    return sampling_params(self.state, self.config)

  def model_fn(self) -> diffusion.ModelFn:
    """`(x_t, t) -> network output` with `params`, for the library's diffusion functions."""
    return model_fn(self.model, self.params)

  def sample(self, num_samples: int, key: jax.Array, *, batch_size: int | None = None) -> np.ndarray:
    """Samples per `config.sampling` (sampler, steps) with `params`, as `--mode sample` draws them.

    Args:
      num_samples: how many.
      key: PRNG key; `--mode sample` uses `jax.random.key(config.sampling.seed)`.
      batch_size: samples per compiled call; `config.sampling.batch_size` when None.

    Returns:
      float32 numpy of shape `(num_samples, *shape)`: images in [-1, 1], or points.
    """
    return Sampler(self.experiment, batch_size or self.config.sampling.batch_size)(self.params, num_samples, key)


def load(workdir: str, **overrides: Any) -> Run:
  """The latest checkpoint of a trained `workdir`, with the config it was trained with.

  Args:
    workdir: a `main.py --workdir` that holds `config.json`, `dataset_info.json` and `checkpoints/`.
    **overrides: dotted config keys to change first, e.g. `**{"sampling.num_steps": 100}`.

  Returns:
    The `Run`.

  Raises:
    FileNotFoundError: `workdir` holds no trained run.
    ValueError: a bad override.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: {workdir!r} is not a workdir of main.py --mode train.")
  with open(path) as f:
    config = config_lib.fill_added_keys(ml_collections.ConfigDict(json.load(f)))
  for key, value in overrides.items():
    if key not in config_lib.flat_keys(config):
      raise ValueError(config_lib.unknown_key_message(config, key))
    section, _, name = key.rpartition(".")
    (config_lib.get(config, section) if section else config)[name] = value
  info_path = os.path.join(workdir, "dataset_info.json")
  info = None
  if os.path.exists(info_path):
    with open(info_path) as f:
      fields = json.load(f)
    info = data.DatasetInfo(**{**fields, "shape": tuple(fields["shape"])})
  exp = build(config, info=info)
  state, step = restore_latest(exp, workdir)
  return Run(exp, state, step)

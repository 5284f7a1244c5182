"""Training: `TrainState`, the pure jitted data-parallel step, and the loop around it.

`train_step(state, batch, schedule)` is one jitted program over the device mesh:
the batch is sharded along `'data'`, the state replicated and donated. Per-step
randomness is `fold_in(key(seed), step)`, generated for the global batch inside
the program, so a run's result depends on the config and seed, not on the
number of devices or hosts. Several optimizer steps can run inside one call
(`training.steps_per_call`, a `lax.scan`), to amortise dispatch.

The loop (`train_and_evaluate`) restores the latest complete checkpoint of the
workdir, reads the batches from the restored step on, saves asynchronously
every `checkpoint_every_steps`, at the end and on SIGTERM, logs a progress
line, `metrics.jsonl` and TensorBoard events, and writes a sample grid from
the EMA parameters every `sample_every_steps`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from diffusion_jax import compiler, data, diffusion, images, losses, parallel, sampling, schedules
from diffusion_jax.checkpoint import Checkpointer
from diffusion_jax.models.mlp import MLPDenoiser
from diffusion_jax.models.unet import UNet

MODELS = ("unet", "mlp")
SAMPLERS = ("ancestral", "ddim")
COMPUTE_DTYPES = ("float32", "bfloat16")
ON_NONFINITE = ("error", "skip")


class TrainState(flax.struct.PyTreeNode):
  """Everything a resumed run needs; `step` is also the data position."""

  step: jax.Array  # int32 scalar: optimizer steps taken (and batches consumed)
  params: Any
  ema_params: Any
  opt_state: optax.OptState
  skipped_steps: jax.Array  # int32 scalar: non-finite updates skipped


# --------------------------------------------------------------------------- config


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def _require(config: ml_collections.ConfigDict, key: str, ok: Callable[[Any], bool], allowed: str) -> Any:
  value = _get(config, key)
  if not ok(value):
    raise ValueError(f"{key} = {value!r} is invalid; allowed: {allowed}.")
  return value


def _is_int(v: Any) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises `ValueError` for any bad key of `config`, before anything is built or compiled."""
  pos_int = lambda v: _is_int(v) and v >= 1
  for key in ["training.num_train_steps", "training.global_batch_size", "training.checkpoint_every_steps",
              "training.log_every_steps", "training.sample_every_steps", "training.steps_per_call",
              "training.max_checkpoints_to_keep", "diffusion.num_diffusion_steps", "sampling.num_samples",
              "sampling.preview_samples",
              "sampling.batch_size", "eval.batch_size"]:
    _require(config, key, pos_int, "a positive integer")
  _require(config, "training.warmup_steps", lambda v: _is_int(v) and v >= 0, "a non-negative integer")
  _require(config, "seed", _is_int, "an integer")
  k = config.training.steps_per_call
  for key in ["training.num_train_steps", "training.checkpoint_every_steps", "training.log_every_steps",
              "training.sample_every_steps"]:
    _require(config, key, lambda v: v % k == 0, f"a multiple of training.steps_per_call = {k}")
  _require(config, "training.learning_rate", lambda v: isinstance(v, (int, float)) and v > 0, "a positive number")
  _require(config, "training.grad_clip_norm", lambda v: isinstance(v, (int, float)) and v >= 0,
           "a non-negative number (0 disables clipping)")
  _require(config, "training.ema_decay", lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a number in [0, 1)")
  _require(config, "training.compute_dtype", lambda v: v in COMPUTE_DTYPES, ", ".join(COMPUTE_DTYPES))
  _require(config, "training.on_nonfinite", lambda v: v in ON_NONFINITE, ", ".join(ON_NONFINITE))
  _require(config, "model.name", lambda v: v in MODELS, ", ".join(MODELS))
  _require(config, "sampling.sampler", lambda v: v in SAMPLERS, ", ".join(SAMPLERS))
  _require(config, "sampling.num_steps",
           lambda v: v is None or (pos_int(v) and v <= config.diffusion.num_diffusion_steps),
           f"None (all steps) or an integer in [1, diffusion.num_diffusion_steps = "
           f"{config.diffusion.num_diffusion_steps}]")
  _require(config, "sampling.eta", lambda v: isinstance(v, (int, float)) and v >= 0, "a number >= 0")
  diffusion.check_model_types(config.diffusion.model_mean_type, config.diffusion.model_var_type)
  if config.sampling.sampler == "ddim" and config.diffusion.model_var_type == "learned_range":
    raise ValueError("sampling.sampler = 'ddim' does not use learned variances; use 'ancestral' with "
                     "diffusion.model_var_type = 'learned_range'.")
  data.check_dataset_name(config.data.dataset)
  if config.data.dataset in data.TOY_DATASETS and config.model.name != "mlp":
    raise ValueError(f"data.dataset = {config.data.dataset!r} is 2-D points; it needs model.name = 'mlp'.")
  if config.data.dataset in data.IMAGE_DATASETS and config.model.name != "unet":
    raise ValueError(f"data.dataset = {config.data.dataset!r} is images; it needs model.name = 'unet'.")
  make_betas(config)


def check_workdir_writable(workdir: str) -> None:
  """Raises `ValueError` unless `workdir` exists as a writable directory or can be created."""
  path = os.path.abspath(workdir)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
    raise ValueError(f"--workdir {workdir!r} is not writable ({path!r} is not a writable directory).")


# --------------------------------------------------------------------------- building blocks


def make_betas(config: ml_collections.ConfigDict) -> np.ndarray:
  """float64 betas from `config.diffusion`."""
  kwargs = {k: v for k, v in config.diffusion.get("beta_kwargs", {}).items() if v is not None}
  return schedules.get_beta_schedule(config.diffusion.beta_schedule,
                                     num_diffusion_steps=config.diffusion.num_diffusion_steps, **kwargs)


def build_model(config: ml_collections.ConfigDict, info: data.DatasetInfo) -> nn.Module:
  """The denoiser of `config.model` for data of `info.shape`; raises `ValueError` if they do not fit."""
  channels = info.shape[-1]
  out = 2 * channels if config.diffusion.model_var_type == "learned_range" else None
  if config.model.name == "mlp":
    return MLPDenoiser(hidden=config.model.hidden, num_layers=config.model.num_layers, out_dim=out)
  model = UNet(
      ch=config.model.ch, ch_mult=tuple(config.model.ch_mult), num_res_blocks=config.model.num_res_blocks,
      attn_resolutions=tuple(config.model.attn_resolutions), dropout=config.model.dropout, out_channels=out,
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


def example_input(info: data.DatasetInfo, batch: int = 1) -> tuple[jax.Array, jax.Array]:
  return jnp.zeros((batch, *info.shape), jnp.float32), jnp.zeros((batch,), jnp.int32)


def init_state(model: nn.Module, tx: optax.GradientTransformation, info: data.DatasetInfo,
               key: jax.Array) -> TrainState:
  """Fresh parameters (EMA = parameters), optimizer state, step 0."""
  params = model.init({"params": key}, *example_input(info))["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                    opt_state=tx.init(params), skipped_steps=jnp.zeros((), jnp.int32))


def model_fn(model: nn.Module, params: Any, *, train: bool = False,
             dropout_key: jax.Array | None = None) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """`(x_t, t) -> model output` for the diffusion functions."""
  rngs = {"dropout": dropout_key} if train else None
  return lambda x, t: model.apply({"params": params}, x, t, train=train, rngs=rngs)


# --------------------------------------------------------------------------- the step


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """The static (hashable) part of the training step."""

  seed: int
  model_mean_type: str
  model_var_type: str
  ema_decay: float
  skip_nonfinite: bool


def _one_step(state: TrainState, batch: dict[str, jax.Array], schedule: schedules.DiffusionSchedule, *,
              model: nn.Module, tx: optax.GradientTransformation, lr_fn: optax.Schedule,
              cfg: StepConfig) -> tuple[TrainState, dict[str, jax.Array]]:
  x_start = data.to_model_input(batch["x"])
  key = jax.random.fold_in(jax.random.key(cfg.seed), state.step)
  t_key, noise_key, dropout_key = jax.random.split(key, 3)
  t = jax.random.randint(t_key, x_start.shape[:1], 0, schedule.num_steps)
  noise = jax.random.normal(noise_key, x_start.shape)

  def loss_fn(params: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    terms = losses.training_losses(
        model_fn(model, params, train=True, dropout_key=dropout_key), schedule, x_start, t, noise,
        model_mean_type=cfg.model_mean_type, model_var_type=cfg.model_var_type)
    return jnp.mean(terms["loss"]), terms

  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  def update(state: TrainState) -> TrainState:
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = optax.incremental_update(params, state.ema_params, 1.0 - cfg.ema_decay)
    return state.replace(step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state)

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
               model: nn.Module, tx: optax.GradientTransformation, lr_fn: optax.Schedule, cfg: StepConfig,
               steps_per_call: int = 1) -> tuple[TrainState, dict[str, jax.Array]]:
  """One (or `steps_per_call`, scanned) optimizer step(s): eps-MSE (or L_hybrid), Adam, EMA.

  Args:
    state: the current state.
    batch: `x` of shape `(batch, ...)`, or `(steps_per_call, batch, ...)` when > 1.
    schedule: the diffusion process (an argument, not a compiled-in constant).
    model, tx, lr_fn, cfg: static parts, bound with `functools.partial`.
    steps_per_call: optimizer steps inside this call.

  Returns:
    (new state, metrics); each metric has shape `(steps_per_call,)` when > 1.
  """
  step = functools.partial(_one_step, schedule=schedule, model=model, tx=tx, lr_fn=lr_fn, cfg=cfg)
  if steps_per_call == 1:
    return step(state, batch)
  # XLA:CPU does not bring the weight-gradient convolutions inside a while loop into the layout of its
  # library kernels: they run on its naive emitter, ~30x slower per step (BENCHMARKS.md). Unrolled, the
  # steps compile like a single one (compile time grows with steps_per_call); elsewhere the loop stays.
  return jax.lax.scan(step, state, batch, unroll=jax.default_backend() == "cpu")


# --------------------------------------------------------------------------- the loop


class _Preemption:
  """Turns SIGTERM into a flag the loop polls (schedulers send it before killing a job)."""

  def __init__(self) -> None:
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum: int, frame: Any) -> None:
    del signum, frame
    self.requested = True

  def restore(self) -> None:
    signal.signal(signal.SIGTERM, self._previous)


class _Writer:
  """metrics.jsonl and TensorBoard events in the workdir (process 0 only)."""

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    if self.active:
      from tensorboardX import SummaryWriter
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.active:
      return
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)
    self._tb.flush()

  def close(self) -> None:
    if self.active:
      self._jsonl.close()
      self._tb.close()


def _fmt_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _first_nonfinite(metrics: dict[str, np.ndarray]) -> int | None:
  finite = np.atleast_1d(metrics["finite"])
  bad = np.flatnonzero(~finite)
  return int(np.atleast_1d(metrics["step"])[bad[0]]) if bad.size else None


@dataclasses.dataclass
class Setup:
  """Everything built from a validated config, before any compilation."""

  info: data.DatasetInfo
  model: nn.Module
  betas: np.ndarray
  schedule: schedules.DiffusionSchedule
  tx: optax.GradientTransformation
  mesh: jax.sharding.Mesh


def setup(config: ml_collections.ConfigDict, workdir: str) -> Setup:
  """Validates everything that can be checked without compiling: config, workdir, data, model, devices."""
  validate_config(config)
  check_workdir_writable(workdir)
  info = data.dataset_info(config)
  model = build_model(config, info)
  data.check_batch_divisibility(config.training.global_batch_size)
  data.check_batch_divisibility(config.sampling.preview_samples, "sampling.preview_samples")
  data.check_batch_divisibility(config.sampling.batch_size, "sampling.batch_size")
  betas = make_betas(config)
  return Setup(info, model, betas, schedules.make_schedule(betas), build_optimizer(config), parallel.make_mesh())


def abstract_state(s: Setup, config: ml_collections.ConfigDict) -> TrainState:
  """Shapes, dtypes and (replicated) shardings of the state, without computing it."""
  shapes = jax.eval_shape(functools.partial(init_state, s.model, s.tx, s.info), jax.random.key(config.seed))
  sharding = parallel.replicated(s.mesh)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), shapes)


def restore_or_init(s: Setup, config: ml_collections.ConfigDict, ckpt: Checkpointer) -> TrainState:
  """The latest complete checkpoint of the workdir, or a fresh state (jitted init placed on the mesh)."""
  target = abstract_state(s, config)
  if ckpt.latest_step() is not None:
    state, _ = ckpt.restore(target)
    logging.info("Resumed from %s at step %d.", ckpt.directory, int(parallel.host_value(state.step)))
    return state
  init = jax.jit(functools.partial(init_state, s.model, s.tx, s.info), out_shardings=parallel.replicated(s.mesh))
  return init(jax.random.key(config.seed))


def make_sample_fn(s: Setup, config: ml_collections.ConfigDict, batch_size: int) -> Callable[..., jax.Array]:
  """jit(params, key) -> samples of shape `(batch_size, *shape)`, sharded over the mesh, per `config.sampling`."""
  sharding = parallel.batch_sharding(s.mesh)
  shape = (batch_size, *s.info.shape)
  sc = config.sampling

  def draw(params: Any, schedule: schedules.DiffusionSchedule, key: jax.Array) -> jax.Array:
    fn = model_fn(s.model, params)
    if sc.sampler == "ddim":
      return sampling.ddim_sample(fn, schedule, shape, key, num_steps=sc.num_steps, eta=sc.eta,
                                  model_mean_type=config.diffusion.model_mean_type,
                                  clip_denoised=sc.clip_denoised and s.info.is_image, sharding=sharding)
    if sc.num_steps is not None and sc.num_steps != s.schedule.num_steps:
      schedule = schedules.respace(s.betas, schedules.space_timesteps(s.schedule.num_steps, sc.num_steps))
    return sampling.sample(fn, schedule, shape, key, model_mean_type=config.diffusion.model_mean_type,
                           model_var_type=config.diffusion.model_var_type,
                           clip_denoised=sc.clip_denoised and s.info.is_image, sharding=sharding)

  jitted = jax.jit(draw, out_shardings=sharding, compiler_options=compiler.compiler_options())
  return lambda params, key: jitted(params, s.schedule, key)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains per `config` in `workdir`, resuming from its latest checkpoint; returns the final state.

  Raises:
    ValueError / FileNotFoundError: bad config, workdir, data or checkpoint, before compiling.
    FloatingPointError: a non-finite loss or gradient with `training.on_nonfinite = 'error'`.
  """
  s = setup(config, workdir)
  tc = config.training
  k = tc.steps_per_call
  os.makedirs(workdir, exist_ok=True)
  ckpt = Checkpointer(workdir, max_to_keep=tc.max_checkpoints_to_keep)
  state = restore_or_init(s, config, ckpt)  # a mismatched checkpoint fails here, before any write
  step = int(parallel.host_value(state.step))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  cfg = StepConfig(config.seed, config.diffusion.model_mean_type, config.diffusion.model_var_type,
                   float(tc.ema_decay), tc.on_nonfinite == "skip")
  leading = 1 if k > 1 else 0
  state_sharding = jax.tree.map(lambda a: a.sharding, state)
  step_fn = jax.jit(
      functools.partial(train_step, model=s.model, tx=s.tx, lr_fn=learning_rate_fn(config), cfg=cfg,
                        steps_per_call=k),
      in_shardings=(state_sharding, parallel.batch_sharding(s.mesh, leading), parallel.replicated(s.mesh)),
      out_shardings=(state_sharding, parallel.replicated(s.mesh)), donate_argnums=0,
      compiler_options=compiler.compiler_options())
  preview = make_sample_fn(s, config, config.sampling.preview_samples)
  batches = data.iterate(data.train_batches(config), step // k)
  writer = _Writer(workdir)
  preemption = _Preemption() if jax.process_count() == 1 else None
  meta = lambda: {"step": step, "config": config.to_dict()}

  def check(pending: tuple[int, dict[str, jax.Array]] | None) -> None:
    if pending is None:
      return
    bad = _first_nonfinite(jax.device_get(pending[1]))
    if bad is not None and tc.on_nonfinite == "error":
      raise FloatingPointError(
          f"Non-finite loss or gradient at step {bad}; training stopped. The last good checkpoint "
          f"({ckpt.latest_step()}) is kept. Lower training.learning_rate, check the data, or set "
          "training.on_nonfinite = 'skip'.")

  logging.info("Training %s on %d device(s), %d process(es), from step %d to %d.", config.data.dataset,
               jax.device_count(), jax.process_count(), step, tc.num_train_steps)
  pending, compiling = None, True
  last_time, last_step, start_time, start_step = time.time(), step, time.time(), step
  try:
    while step < tc.num_train_steps:
      batch = parallel.global_batch(next(batches), s.mesh, leading)
      state, metrics = step_fn(state, batch, s.schedule)
      check(pending)  # the previous call's flags, while this call runs
      pending, step = (step, metrics), step + k
      if compiling:  # the first call also compiled: time it on its own
        compiling = False
        jax.block_until_ready(state)
        logging.info("First step (with compilation) took %.1f s.", time.time() - start_time)
        last_time = start_time = time.time()
        start_step = last_step = step
      # Several processes must stop at the same step: JAX's preemption sync (via Orbax) agrees on one.
      stop = ckpt.reached_preemption(step) if preemption is None else preemption.requested
      if step % tc.log_every_steps == 0 or step == tc.num_train_steps or stop:
        check(pending)
        m = {key: float(np.mean(v)) for key, v in jax.device_get(metrics).items() if key not in ("finite", "step")}
        m["skipped_steps"] = int(parallel.host_value(state.skipped_steps))
        now = time.time()
        rate = (step - last_step) / max(now - last_time, 1e-9)
        m.update(steps_per_s=rate, images_per_s=rate * tc.global_batch_size)
        eta = (tc.num_train_steps - step) * (now - start_time) / max(step - start_step, 1)
        logging.info("step %d/%d  loss %.5f  grad_norm %.3f  %.2f steps/s  %.1f images/s  ETA %s", step,
                     tc.num_train_steps, m["loss"], m["grad_norm"], rate, m["images_per_s"], _fmt_duration(eta))
        writer.write(step, m)
        last_time, last_step = now, step
      if step % tc.checkpoint_every_steps == 0 or step == tc.num_train_steps or stop:
        check(pending)
        ckpt.save(step, state, meta(), force=True)
      if step % tc.sample_every_steps == 0 or step == tc.num_train_steps:  # every process takes part
        samples = parallel.gather(preview(state.ema_params, jax.random.fold_in(jax.random.key(config.seed + 1), step)))
        if jax.process_index() == 0:
          path = os.path.join(workdir, "samples", f"step_{step:08d}.png")
          images.save_samples(samples, path, s.info, config.data.dataset)
          logging.info("Wrote %s", path)
      if stop:
        logging.warning("SIGTERM: saved step %d and stopping; re-run with the same --workdir to resume.", step)
        break
    check(pending)
  finally:
    if preemption is not None:
      preemption.restore()
    writer.close()
    ckpt.close()
  return state

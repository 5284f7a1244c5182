"""The training loop: resume, the jitted step over the data, checkpoints, logs, previews, pre-emption.

`train_and_evaluate(config, workdir)` restores the latest complete checkpoint
of the workdir, reads the batches from the restored step on, saves
asynchronously every `checkpoint_every_steps`, at the end and on SIGTERM,
logs a progress line, `metrics.jsonl` and TensorBoard events, and writes a
sample grid from the EMA parameters every `sample_every_steps`.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from diffusion_jax.run import compiler, data, experiment, images, parallel, quality, sampler, trained, transfer
from diffusion_jax.run.checkpoint import Checkpointer
from diffusion_jax.run.experiment import Experiment, TrainState
from diffusion_jax.run.logs import MetricWriter, fmt_duration
from diffusion_jax.run.step import make_train_step


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


def _first_nonfinite(metrics: dict[str, np.ndarray]) -> int | None:
  bad = np.flatnonzero(~metrics["finite"])
  return int(metrics["step"][bad[0]]) if bad.size else None


def restore_or_init(exp: Experiment, ckpt: Checkpointer) -> TrainState:
  """The latest complete checkpoint of the workdir, or a fresh state (jitted init placed on the mesh) whose
  parameters are `config.pretrained`'s when set."""
  if ckpt.latest_step() is not None:
    state, _ = ckpt.restore(experiment.abstract_state(exp))
    logging.info("Resumed from %s at step %d.", ckpt.directory, int(parallel.host_value(state.step)))
    return state
  params = None
  if exp.config.pretrained is not None:
    params = transfer.load_pretrained(exp)
    logging.info("Starting from the pretrained %s.", exp.config.pretrained)
  init = compiler.jit(lambda key, params: experiment.init_state(
      exp.model, exp.tx, exp.info, key, params, experiment.history_steps(exp.config)),
      out_shardings=parallel.replicated(exp.mesh))
  return init(jax.random.key(exp.config.seed), params)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains per `config` in `workdir`, resuming from its latest checkpoint; returns the final state.

  Raises:
    ValueError / FileNotFoundError: bad config, workdir, data or checkpoint, before compiling.
    FloatingPointError: a non-finite loss or gradient with `training.on_nonfinite = 'error'`.
  """
  exp = experiment.build(config, workdir)
  tc, qc = config.training, config.eval
  metric = quality.check_quality_config(config, exp.info) if qc.quality_every_steps else None  # before compiling
  k = tc.steps_per_call
  os.makedirs(workdir, exist_ok=True)
  ckpt = Checkpointer(workdir, max_to_keep=tc.max_checkpoints_to_keep, on_corrupt=tc.on_corrupt_checkpoint)
  state = restore_or_init(exp, ckpt)  # a mismatched checkpoint fails here, before any write
  step = int(parallel.host_value(state.step))
  if jax.process_index() == 0:
    trained.write_run_files(exp, workdir)
  scorer = quality.Scorer(config, exp.info, exp.mesh, metric) if metric is not None else None
  step_fn = make_train_step(exp, state)
  preview = sampler.Sampler(exp, config.sampling.preview_samples)
  batches = data.iterate(data.train_batches(config, exp.info), step // k, num_workers=config.data.num_workers)
  writer = MetricWriter(workdir)
  preemption = _Preemption() if jax.process_count() == 1 else None
  unit = "images" if exp.info.is_image else "points"
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

  logging.info("Training %s on %d device(s), %d process(es), from step %d to %d. Compiling the train step...",
               config.data.dataset, jax.device_count(), jax.process_count(), step, tc.num_train_steps)
  pending, compiling = None, True
  last_time, last_step, start_time, start_step = time.time(), step, time.time(), step
  try:
    while step < tc.num_train_steps:
      batch = parallel.global_batch(next(batches), exp.mesh, leading_axes=1)
      state, metrics = step_fn(state, batch, exp.schedule)
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
        m.update({"steps_per_s": rate, f"{unit}_per_s": rate * tc.global_batch_size})
        eta = (tc.num_train_steps - step) * (now - start_time) / max(step - start_step, 1)
        logging.info("step %d/%d  loss %.5f  grad_norm %.3f  %.2f steps/s  %.1f %s/s  ETA %s", step,
                     tc.num_train_steps, m["loss"], m["grad_norm"], rate, m[f"{unit}_per_s"], unit,
                     fmt_duration(eta))
        writer.write(step, m)
        last_time, last_step = now, step
      if step % tc.checkpoint_every_steps == 0 or step == tc.num_train_steps or stop:
        check(pending)
        ckpt.save(step, state, meta(), force=True)
      last = step == tc.num_train_steps
      grid = step % tc.sample_every_steps == 0 or last
      score = scorer is not None and (step % qc.quality_every_steps == 0 or last)
      if grid or score:  # one draw serves both; every process takes part
        n = max(config.sampling.preview_samples if grid else 0, qc.quality_samples if score else 0)
        labels = None  # the quality figures need every class; a preview alone draws sampling.labels
        if exp.labels is not None:
          labels = exp.labels.every_class(n) if score else exp.labels.labels(n)
        samples = preview(state.ema_params, n, jax.random.fold_in(jax.random.key(config.seed + 1), step),
                          f"{'preview' if grid else 'quality'} samples at step {step}", labels)
        title = f"step {step}"
        if score:
          figures = scorer.score(samples[:qc.quality_samples],
                                 labels=None if labels is None else labels[:qc.quality_samples])
          logging.info("Quality at step %d (%d EMA samples): %s", step, qc.quality_samples, scorer.report(figures))
          writer.write(step, scorer.as_metrics(figures))
          title = f"step {step}: {scorer.report(figures, short=True)}"
        if grid and jax.process_index() == 0:
          path = os.path.join(workdir, "samples", f"step_{step:08d}.png")
          n = config.sampling.preview_samples
          images.save_samples(samples[:n], path, exp.info, config.data.dataset,
                              labels=None if labels is None else labels[:n], title=title)
          logging.info("Wrote %s", path)
        last_time = time.time()  # the preview's time is not training time
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

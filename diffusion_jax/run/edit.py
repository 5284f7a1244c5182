"""`--mode edit`: inpainting, SDEdit and DDIM inversion with the latest checkpoint, per `config.edit` and
`config.sampling`, one compiled program per task, over all devices.

    python main.py --config configs/digits.py --workdir workdirs/digits --mode edit --config.edit.mask=left_half

The inputs are `edit.input` (a PNG, or an `.npz` whose `images` are uint8 (N, H, W, C), optional `labels`) or, when
it is None, the first `sampling.num_samples` images of `eval.split`. `inpaint` fills the region `edit.mask` marks (a
built-in mask, or a PNG/.npz whose white/non-zero pixels are filled, diffusers' convention): RePaint (`edit.resample`,
`edit.jump_length`) with the ancestral sampler, the known region replaced at each step with the others. `sdedit`
noises the inputs to step `edit.start` and samples from there; `invert` encodes them with DDIM inversion and decodes
the latents with DDIM (eta = 0), both on the sampler's timesteps. A class-conditional model is given the inputs'
labels where they have them, else the null label (its unconditional model).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from diffusion_jax import editing, files, sampling, schedules
from diffusion_jax.run import compiler, data, experiment, images, modes, parallel, sampler, transfer
from diffusion_jax.run import config as config_lib
from diffusion_jax.run.experiment import Experiment
from diffusion_jax.run.logs import Progress


def builtin_mask(name: str, height: int, width: int) -> np.ndarray:
  """The built-in mask `name` (`config.EDIT_MASKS`) as float32 `(height, width)`, 1 where the model fills in: a half,
  or the `center` square of half the side."""
  rows, cols = np.mgrid[:height, :width]
  fill = {"left_half": cols < width // 2, "right_half": cols >= width // 2, "top_half": rows < height // 2,
          "bottom_half": rows >= height // 2,
          "center": (abs(2 * rows - height + 1) < height // 2 + 1) & (abs(2 * cols - width + 1) < width // 2 + 1)}
  return fill[name].astype(np.float32)


def read_png(path: str, channels: int) -> np.ndarray:
  """A PNG as uint8 `(1, H, W, C)`: C = 1 for grey, 3 for colour (alpha dropped); `ValueError` unless C is
  `channels`."""
  with Image.open(path) as im:
    im = im.convert("L" if im.mode in ("1", "L", "LA", "I", "I;16") else "RGB")
    x = np.asarray(im, np.uint8).reshape(1, im.height, im.width, -1)
  if x.shape[-1] != channels:
    raise ValueError(f"{path!r} is a {'grey' if x.shape[-1] == 1 else 'colour'} image; this model makes images "
                     f"of {channels} channel{'s' * (channels > 1)}.")
  return x


def read_inputs(config: ml_collections.ConfigDict, exp: Experiment) -> tuple[np.ndarray, np.ndarray | None]:
  """The images to edit, uint8 `(N, H, W, C)`, and their labels if any; `ValueError` unless they are the model's
  size and channels."""
  path, shape = config.edit.input, exp.info.shape
  if path is None:
    records = data.image_records(exp.info, config.eval.split, config.data.data_dir)
    examples = [records[i] for i in range(min(config.sampling.num_samples, len(records)))]
    labels = np.array([int(e["label"]) for e in examples]) if "label" in examples[0] else None
    return np.stack([e["x"] for e in examples]), labels
  if path.endswith(".png"):
    x, labels = read_png(path, shape[-1]), None
  else:
    with np.load(path) as f:
      if "images" not in f:
        raise ValueError(f"edit.input = {path!r} has no 'images' array (it has {sorted(f.files)}).")
      x, labels = f["images"], (f["labels"] if "labels" in f else None)
  if x.dtype != np.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape):
    raise ValueError(f"edit.input = {path!r} holds {x.dtype} images of shape {tuple(x.shape)}; this model makes uint8 "
                     f"(N, {', '.join(map(str, shape))}) images (its size and channels).")
  return x, labels


def read_mask(spec: str, n: int, height: int, width: int) -> np.ndarray:
  """`edit.mask` as float32 `(n, height, width, 1)`, 1 where the model fills in; `ValueError` for a wrong shape."""
  if spec in config_lib.EDIT_MASKS:
    fill = builtin_mask(spec, height, width)
  elif spec.endswith(".png"):
    with Image.open(spec) as im:
      fill = np.asarray(im.convert("L")) >= 128
  else:
    with np.load(spec) as f:
      fill = f["mask"] if "mask" in f else f[f.files[0]]
    fill = fill[..., 0] if fill.ndim in (3, 4) and fill.shape[-1] == 1 and fill.shape[-2] == width else fill
    fill = fill != 0
  fill = np.asarray(fill, np.float32)
  if fill.shape[-2:] != (height, width) or fill.ndim not in (2, 3) or (fill.ndim == 3 and len(fill) not in (1, n)):
    raise ValueError(f"edit.mask = {spec!r} has shape {fill.shape}; allowed: ({height}, {width}), (1 or {n}, "
                     f"{height}, {width}) or with a last axis of 1, 1 (white) where the model fills in.")
  return np.broadcast_to(fill.reshape(-1, height, width, 1), (n, height, width, 1)).copy()


def make_editor(exp: Experiment, batch_size: int, progress: Progress) -> tuple[Any, sampler.Steps, int, int]:
  """jit(params, steps, key, images, masks, labels) -> (results, middle column) for `config.edit.task`, per batch;
  what it steps through; the progress steps of a batch; its network calls per image."""
  config, sc, ec = exp.config, exp.config.sampling, exp.config.edit
  shape = (batch_size, *exp.info.shape)
  sharding = parallel.batch_sharding(exp.mesh)
  T = exp.schedule.num_diffusion_steps
  start = (T // 2 if ec.start is None else ec.start) if ec.task == "sdedit" else None
  if ec.task == "invert":  # DDIM's steps, whatever the sampler
    timesteps = schedules.sampling_timesteps(exp.betas, num_steps=sampler.sampling_steps(config),
                                             spacing=invert_spacing(config))
  else:
    timesteps = sampler.sampling_timesteps(exp, start)
  steps = sampler.sampler_steps(exp, timesteps)
  repaint = ec.task == "inpaint" and sc.sampler == "ancestral" and ec.resample > 1
  mean_type = config.diffusion.model_mean_type

  def edit(params: Any, steps: Any, key: jax.Array, x: jax.Array, masks: jax.Array, labels: jax.Array | None
           ) -> tuple[jax.Array, jax.Array]:
    fn = sampler.guided_model_fn(exp, params, labels, sc.guidance_scale)
    if ec.task == "invert":
      latent = editing.ddim_invert(exp.schedule, model_fn=fn, x_0=x, timesteps=timesteps, model_mean_type=mean_type,
                                   sharding=sharding, progress=progress)
      out = sampling.ddim_sample(exp.schedule, model_fn=fn, shape=shape, key=key, timesteps=timesteps,
                                 model_mean_type=mean_type, clip_denoised=False, sharding=sharding, x_T=latent)
      return jnp.clip(out, -1.0, 1.0), latent
    if ec.task == "sdedit":
      x_start = editing.sdedit_start(exp.schedule, image=x, start=start, key=jax.random.fold_in(key, 1))
      out = sampler.run_sampler(exp, steps, fn, shape=shape, key=key, timesteps=timesteps, progress=progress,
                                x_T=x_start)
      return out, x_start
    inpaint = sampling.Inpainting(x, 1.0 - masks)
    if repaint:
      out = editing.repaint_sample(steps, model_fn=fn, inpaint=inpaint, key=key, jump_length=ec.jump_length,
                                   resample=ec.resample, model_mean_type=mean_type,
                                   model_var_type=config.diffusion.model_var_type,
                                   clip_denoised=sc.clip_denoised, sharding=sharding, progress=progress)
    else:
      out = sampler.run_sampler(exp, steps, fn, shape=shape, key=key, timesteps=timesteps, progress=progress,
                                inpaint=inpaint)
    return out, jnp.where(masks > 0, 0.0, x)  # the input with the filled region grey

  jitted = compiler.jit(edit, out_shardings=(sharding, sharding))
  if repaint:  # the walk's moves; the network is called on the moves down
    moves = np.diff(editing.repaint_timesteps(len(timesteps), jump_length=ec.jump_length, resample=ec.resample))
    return jitted, steps, len(moves), int((moves < 0).sum())
  if ec.task == "invert":  # the progress follows the inversion
    return jitted, steps, len(timesteps), 2 * len(timesteps)
  return jitted, steps, len(timesteps), sampler.network_calls(config, timesteps)


def invert_spacing(config: ml_collections.ConfigDict) -> str:
  """The spacing of DDIM inversion: `sampling.spacing`, or DDIM's default."""
  return config.sampling.spacing or sampler.DEFAULT_SPACINGS["ddim"]


def _describe(config: ml_collections.ConfigDict) -> str:
  ec, sc = config.edit, config.sampling
  if ec.task == "invert":
    return f"DDIM inversion and decoding, {sampler.sampling_steps(config)} {invert_spacing(config)} steps each"
  if ec.task == "sdedit":
    start = config.diffusion.num_diffusion_steps // 2 if ec.start is None else ec.start
    return f"SDEdit from step {start} with {sampler.describe_sampler(config)} (at most start + 1)"
  how = (f"RePaint (jump length {ec.jump_length}, {ec.resample} resamplings)"
         if sc.sampler == "ancestral" and ec.resample > 1 else "the known region replaced at each step")
  return f"inpainting of mask {ec.mask!r}, {how}, {sampler.describe_sampler(config)}"


def edit(config: ml_collections.ConfigDict, workdir: str) -> str:
  """`--mode edit` on the latest checkpoint: writes `edit_<task>_<step>.png` (triples of input, mask / start /
  latent, result, four a row) and `.npz` (`images`: the results as uint8 shaped like the input; `latents` for
  `invert`).

  Returns:
    Path of the `.npz`.
  """
  exp = experiment.build(config, workdir, transfer.pretrained_info(config) if config.pretrained is not None else None)
  if not exp.info.is_image:
    raise ValueError(f"--mode edit edits images; data.dataset = {config.data.dataset!r} is 2-D points.")
  x, labels = read_inputs(config, exp)  # before anything compiles
  n, (h, w, _) = len(x), exp.info.shape
  masks = read_mask(config.edit.mask, n, h, w) if config.edit.task == "inpaint" else np.zeros((n, h, w, 1), np.float32)
  K = experiment.num_classes(exp)
  if K is not None:
    labels = np.full(n, K) if labels is None else np.asarray(labels)
  data.check_batch_divisibility(config.sampling.batch_size, "sampling.batch_size")
  params, step = modes.load_params(exp, workdir)
  batch = min(config.sampling.batch_size, -(-n // jax.device_count()) * jax.device_count())
  progress = Progress()
  jitted, steps, moves, calls = make_editor(exp, batch, progress)
  logging.info("Editing %d images with %s: %s; compiling...", n, modes.params_source(config, step), _describe(config))
  num_batches = -(-n // batch)
  progress.start(f"edit {config.edit.task} ({n} images, {calls} network calls each)", num_batches * moves)
  pad = lambda a: np.pad(a, [(0, num_batches * batch - n)] + [(0, 0)] * (a.ndim - 1), mode="edge")
  xs, ms, ys = pad(np.asarray(data.to_model_input(jnp.asarray(x)))), pad(masks), None if K is None else pad(labels)
  sharding = parallel.batch_sharding(exp.mesh)
  results, middles = [], []
  for b in range(num_batches):
    progress.offset = b * moves
    part = slice(b * batch, (b + 1) * batch)
    x_b, m_b = (jax.device_put(jnp.asarray(a[part]), sharding) for a in (xs, ms))
    y_b = None if ys is None else sampler.put_labels(exp, ys[part], batch)
    out, middle = jitted(params, steps, jax.random.fold_in(jax.random.key(config.sampling.seed), b), x_b, m_b, y_b)
    results.append(parallel.gather(out))
    middles.append(parallel.gather(middle))
  result, middle = np.concatenate(results)[:n], np.concatenate(middles)[:n]
  stem = os.path.join(workdir, f"edit_{config.edit.task}_{modes.tag(step)}")
  if jax.process_index() == 0:
    arrays = {"images": data.to_uint8(result)}
    if config.edit.task == "invert":
      arrays["latents"] = middle.astype(np.float32)
    if labels is not None:
      arrays["labels"] = labels
    files.write_npz(stem + ".npz", arrays)
    shown = middle / 3.0 if config.edit.task == "invert" else middle  # latents ~ N(0, I): 3 sd to the pixel range
    triples = np.stack([x, data.to_uint8(shown), data.to_uint8(result)], 1)[:images.MAX_SHOWN // 3]
    grid = images.image_grid(triples.reshape(-1, *triples.shape[2:]), columns=3 * min(4, n))  # 4 triples a row
    with files.atomic_open(stem + ".png", "wb") as f:
      Image.fromarray(grid).save(f, format="PNG")
    logging.info("Wrote %s.npz and %s.png (triples of input, %s, result)", stem, stem,
                 {"inpaint": "mask", "sdedit": "noised start", "invert": "latent / 3"}[config.edit.task])
  return stem + ".npz"

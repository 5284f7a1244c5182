"""Defaults shared by every config; each experiment file overrides what it needs."""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "digits"
  c.data.data_dir = config_dict.placeholder(str)  # TFDS data_dir; None: ~/tensorflow_datasets
  c.data.random_flip = False

  c.model = ml_collections.ConfigDict()
  c.model.name = "unet"
  c.model.ch = 128
  c.model.ch_mult = (1, 2, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attn_resolutions = (16,)
  c.model.dropout = 0.1
  c.model.num_groups = 32
  c.model.remat = False
  c.model.hidden = 128  # mlp only
  c.model.num_layers = 3  # mlp only

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.num_diffusion_steps = 1000
  c.diffusion.beta_schedule = "linear"
  c.diffusion.beta_kwargs = ml_collections.ConfigDict()  # None values are left to the schedule's defaults
  c.diffusion.beta_kwargs.beta_start = config_dict.placeholder(float)
  c.diffusion.beta_kwargs.beta_end = config_dict.placeholder(float)
  c.diffusion.model_mean_type = "eps"
  c.diffusion.model_var_type = "fixed_large"

  c.training = ml_collections.ConfigDict()
  c.training.num_train_steps = 800_000
  c.training.global_batch_size = 128
  c.training.learning_rate = 2e-4
  c.training.warmup_steps = 5000
  c.training.grad_clip_norm = 1.0
  c.training.adam_b1 = 0.9
  c.training.adam_b2 = 0.999
  c.training.adam_eps = 1e-8
  c.training.ema_decay = 0.9999
  c.training.compute_dtype = "float32"
  c.training.steps_per_call = 1
  c.training.on_nonfinite = "error"  # or "skip": drop the update, count it in the metrics
  c.training.checkpoint_every_steps = 10_000
  c.training.max_checkpoints_to_keep = 3
  c.training.log_every_steps = 100
  c.training.sample_every_steps = 50_000

  c.sampling = ml_collections.ConfigDict()
  c.sampling.sampler = "ancestral"  # or "ddim"
  c.sampling.num_steps = config_dict.placeholder(int)  # None: every diffusion step
  c.sampling.eta = 0.0  # ddim only
  c.sampling.clip_denoised = True
  c.sampling.use_ema = True
  c.sampling.num_samples = 64
  c.sampling.batch_size = 64
  c.sampling.preview_samples = 64
  c.sampling.seed = 0

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"
  c.eval.batch_size = 128
  c.eval.num_examples = 0  # 0: the whole split
  c.eval.timesteps_per_call = 1
  return c

"""What the published 256x256 DDPM models share (configs/ddpm_{celebahq,church,bedroom,cat}_256.py)."""

from configs import default


def get_config(dataset: str):
  c = default.get_config()
  c.data.dataset = dataset
  c.data.random_flip = True
  # Ho et al.'s 256x256 UNet: 113.7M parameters.
  c.model.ch = 128
  c.model.ch_mult = (1, 1, 2, 2, 4, 4)
  c.model.num_res_blocks = 2
  c.model.attn_resolutions = (16,)
  c.model.dropout = 0.0
  c.model.num_groups = 32
  c.diffusion.num_diffusion_steps = 1000
  c.diffusion.beta_schedule = "linear"
  c.diffusion.beta_kwargs.beta_start = 1e-4
  c.diffusion.beta_kwargs.beta_end = 0.02
  c.diffusion.model_mean_type = "eps"
  c.diffusion.model_var_type = "fixed_small"
  # Their 256x256 recipe, for --mode train (fine-tuning from the weights).
  c.training.num_train_steps = 800_000
  c.training.global_batch_size = 64
  c.training.learning_rate = 2e-5
  c.training.warmup_steps = 5000
  c.training.ema_decay = 0.9999
  c.sampling.num_samples = 50_000
  c.sampling.batch_size = 64
  c.eval.batch_size = 64
  c.eval.quality_metric = "inception"
  c.eval.quality_samples = 50_000
  c.eval.quality_bootstrap = 10  # the FID's spread: each resample is a 2048-dim Frechet distance (seconds)
  return c

"""A tiny class-conditional UNet on the digits for tests: compiles and trains in seconds.

    python main.py --config configs/tiny.py --workdir /tmp/tiny
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.dataset = "digits"
  c.model.ch = 8
  c.model.ch_mult = (1, 2)
  c.model.num_res_blocks = 1
  c.model.attn_resolutions = (4,)
  c.model.num_groups = 4
  c.model.dropout = 0.1
  c.model.class_conditional = True  # so that every end-to-end test also carries labels
  c.diffusion.num_diffusion_steps = 50
  c.training.num_train_steps = 8
  c.training.global_batch_size = 8
  c.training.learning_rate = 1e-3
  c.training.warmup_steps = 2
  c.training.ema_decay = 0.9
  c.training.log_every_steps = 2
  c.training.checkpoint_every_steps = 4
  c.training.sample_every_steps = 8
  c.sampling.num_samples = 8
  c.sampling.batch_size = 8
  c.sampling.preview_samples = 8
  c.eval.batch_size = 100
  c.eval.num_examples = 100
  c.eval.timesteps_per_call = 5
  c.eval.quality_samples = 64
  return c

"""MNIST (28x28x1) with a 3-level UNet.

    python main.py --config configs/mnist.py --workdir workdirs/mnist

Needs MNIST prepared once: python -m diffusion_jax.prepare mnist. Digits are clearly
formed after ~20k steps.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.dataset = "mnist"
  c.model.ch = 64
  c.model.ch_mult = (1, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attn_resolutions = (14,)
  c.model.num_groups = 32
  c.training.num_train_steps = 50_000
  c.training.global_batch_size = 128
  c.training.learning_rate = 2e-4
  c.training.warmup_steps = 1000
  c.training.ema_decay = 0.9995
  c.training.checkpoint_every_steps = 5000
  c.training.sample_every_steps = 10_000
  # Dataset FID, confident share and class balance of a classifier trained once on the train split.
  c.eval.quality_samples = 1000
  c.eval.quality_every_steps = 10_000
  return c

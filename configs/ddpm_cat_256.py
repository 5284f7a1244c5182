"""The published google/ddpm-cat-256 (and google/ddpm-ema-cat-256): Ho et al.'s LSUN Cat model.

Download it (diffusers format: config.json, scheduler_config.json, and diffusion_pytorch_model.safetensors
or .bin), then:

    python main.py --config configs/ddpm_cat_256.py --config.pretrained=PATH --workdir workdirs/ddpm_cat \
        --mode sample --config.sampling.num_samples=64
    python main.py --config configs/ddpm_cat_256.py --config.pretrained=PATH --workdir workdirs/ddpm_cat \
        --mode eval --config.eval.inception_weights=PATH/default_1.pt

Sampling: 1000 ancestral steps, sigma_t^2 = beta-tilde_t (the scheduler file's fixed_small), x_0
clipped. Expected (the paper's Table 3, EMA weights): FID 19.75 on 50k samples against the train split's
statistics. Eval reads TFDS lsun/cat (prepared once, README; LSUN images are cropped to their central
square); bits/dim on its train split.
"""

from configs import _ddpm_256


def get_config():
  c = _ddpm_256.get_config("lsun/cat")
  c.eval.split = "train"
  c.eval.num_examples = 1000  # no held-out split: bits/dim of 1000 training images
  return c

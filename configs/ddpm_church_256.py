"""The published google/ddpm-church-256 (and google/ddpm-ema-church-256): Ho et al.'s LSUN Church model.

Download it (diffusers format: config.json, scheduler_config.json, and diffusion_pytorch_model.safetensors
or .bin), then:

    python main.py --config configs/ddpm_church_256.py --config.pretrained=PATH --workdir workdirs/ddpm_church \
        --mode sample --config.sampling.num_samples=64
    python main.py --config configs/ddpm_church_256.py --config.pretrained=PATH --workdir workdirs/ddpm_church \
        --mode eval --config.eval.inception_weights=PATH/default_1.pt

Sampling: 1000 ancestral steps, sigma_t^2 = beta-tilde_t (the scheduler file's fixed_small), x_0
clipped. Expected (the paper's Table 3, EMA weights): FID 7.89 on 50k samples against the train split's
statistics. Eval reads TFDS lsun/church_outdoor (prepared once, README; LSUN images are cropped to their central
square); bits/dim on its validation split.
"""

from configs import _ddpm_256


def get_config():
  c = _ddpm_256.get_config("lsun/church_outdoor")
  c.eval.split = "validation"
  return c

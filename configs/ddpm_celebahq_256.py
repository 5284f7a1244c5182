"""The published google/ddpm-celebahq-256 (and google/ddpm-ema-celebahq-256): Ho et al.'s CelebA-HQ model.

Download it (diffusers format: config.json, scheduler_config.json, and diffusion_pytorch_model.safetensors
or .bin), then:

    python main.py --config configs/ddpm_celebahq_256.py --config.pretrained=PATH --workdir workdirs/ddpm_celebahq \
        --mode sample --config.sampling.num_samples=64
    python main.py --config configs/ddpm_celebahq_256.py --config.pretrained=PATH --workdir workdirs/ddpm_celebahq \
        --mode eval --config.eval.inception_weights=PATH/default_1.pt

Sampling: 1000 ancestral steps, sigma_t^2 = beta-tilde_t (the scheduler file's fixed_small), x_0
clipped. The paper shows CelebA-HQ samples and reports no FID for them; eval gives FID on 50k
samples against the train split's statistics. Eval reads TFDS celeb_a_hq/256 (prepared once
from the manual download TFDS describes); bits/dim of 1000 of its train images (it has no other split).
"""

from configs import _ddpm_256


def get_config():
  c = _ddpm_256.get_config("celeb_a_hq/256")
  c.eval.split = "train"
  c.eval.num_examples = 1000  # no held-out split: bits/dim of 1000 training images
  return c

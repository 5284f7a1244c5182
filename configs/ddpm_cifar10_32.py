"""The published CIFAR-10 model of Ho et al. (2020): google/ddpm-cifar10-32 and google/ddpm-ema-cifar10-32.

Download one of them (diffusers format: config.json, scheduler_config.json, and
diffusion_pytorch_model.safetensors or .bin), then sample and evaluate it with main.py:

    python main.py --config configs/ddpm_cifar10_32.py --config.pretrained=PATH --workdir workdirs/ddpm_cifar10 \
        --mode sample --config.sampling.num_samples=50000
    python main.py --config configs/ddpm_cifar10_32.py --config.pretrained=PATH --workdir workdirs/ddpm_cifar10 \
        --mode eval --config.eval.inception_weights=PATH/default_1.pt

The directory's layout and schedule are checked against this config when it loads. Expected
(the paper's Table 1, L_simple, from the EMA weights: ddpm-ema-cifar10-32): FID 3.17 on 50k
samples against the train split, NLL <= 3.75 bits/dim on the test set. Sampling is theirs:
1000 ancestral steps, sigma_t^2 = beta_t (their CIFAR-10 setting; the scheduler file's
fixed_small is --config.diffusion.model_var_type=fixed_small), x_0 clipped to [-1, 1]. Eval
needs CIFAR-10 prepared once (README). --mode train fine-tunes from the weights with the
paper's recipe (configs/cifar10.py).
"""

from configs import cifar10


def get_config():
  c = cifar10.get_config()
  c.sampling.num_samples = 50_000
  return c

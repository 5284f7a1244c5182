"""CIFAR-10, class-conditional, with classifier-free guidance: the paper's network and recipe with a label
embedding and 10% label dropout (Ho & Salimans 2022 trained this way).

    python main.py --config configs/cifar10_conditional.py --workdir workdirs/cifar10_cond
    python main.py --config configs/cifar10_conditional.py --workdir workdirs/cifar10_cond --mode eval \
        --config.eval.inception_weights=PATH/default_1.pt

--mode eval draws 50k samples (every class in turn) at w = 0, 1, 2, 4 and reports FID and
KID at each (table in the log, guidance_<step>.png): the fidelity/diversity trade-off.
Not measured here (800k steps on an accelerator). For reference, Ho & Salimans report on
ImageNet 64x64 that FID is best at small w (around 0.1-0.3 in their parametrisation,
which is ours minus 1) and IS rises with w.
"""

from configs import cifar10, default


def get_config():
  return default.class_conditional(cifar10.get_config())

"""MNIST, class-conditional, with classifier-free guidance: configs/mnist.py's UNet with a label embedding.

    python main.py --config configs/mnist_conditional.py --workdir workdirs/mnist_cond
    python main.py --config configs/mnist_conditional.py --workdir workdirs/mnist_cond --mode eval

10% of the labels are dropped to the null label in training. --mode eval scores 1000
samples at w = 0, 1, 2, 4: the share a classifier trained on MNIST's train split puts in
the requested class, and the dataset FID (table in the log, guidance_<step>.png). Not
measured here (it needs MNIST prepared, README, and an accelerator for 50k steps in
minutes); from the digits job, expect the agreement to rise with w and the FID to be
lowest near w = 1.
"""

from configs import default, mnist


def get_config():
  return default.class_conditional(mnist.get_config())

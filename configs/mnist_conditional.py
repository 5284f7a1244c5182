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

from configs import mnist


def get_config():
  c = mnist.get_config()
  c.model.class_conditional = True
  c.training.label_dropout = 0.1
  c.sampling.num_samples = 100  # a row of 10 per class
  c.sampling.preview_samples = 100
  c.eval.guidance_scales = (0.0, 1.0, 2.0, 4.0)
  return c

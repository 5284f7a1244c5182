"""`python -m diffusion_jax.prepare cifar10|cifar100|mnist|fashion_mnist [--archive PATH] [--data_dir DIR]`:
the standard datasets prepared from their authors' files, without TensorFlow (`diffusion_jax.run.data.standard`).
"""

from diffusion_jax.run.data.standard import main

if __name__ == "__main__":
  main()

"""Your own images: a directory tree of PNG, JPEG, WebP, BMP or GIF files, at 64x64 (README "Train on your own
images").

    python main.py --config configs/folder.py --workdir workdirs/mine --config.data.image_dir=PATH/TO/IMAGES
    # one class per first-level subdirectory, sampled per class with classifier-free guidance:
    python main.py --config configs/folder.py --workdir workdirs/mine_cond --config.data.image_dir=PATH/TO/IMAGES \
        --config.model.class_conditional=True

The first run prepares the folder once into records under DATA_DIR/diffusion_jax (`data.data_dir`, default
~/tensorflow_datasets): each image's shorter side resized to 64 and its centre cropped, 5% of the files held out
as the test split. Other sizes: --config.data.image_size=32 (then --config.model.attn_resolutions="(16,)" still
fits), grey images: --config.data.channels=1. The model is the DDPM UNet at 64x64 (4 levels down to 8x8,
attention at 16x16, ~36M parameters).
"""

from configs import cifar10, default


def get_config():
  c = default.get_config()
  c.data.dataset = "folder"
  c.data.image_size = 64
  c.data.random_flip = True
  c.model = cifar10.get_config().model  # the paper's CIFAR-10 UNet: at 64x64, 4 levels down to 8x8
  c.diffusion.num_diffusion_steps = 1000
  c.training.num_train_steps = 200_000
  c.training.global_batch_size = 64
  c.training.learning_rate = 2e-4
  c.training.warmup_steps = 1000
  c.training.ema_decay = 0.9999
  c.training.checkpoint_every_steps = 5000
  c.training.sample_every_steps = 10_000
  c.training.log_every_steps = 500
  c.sampling.batch_size = 256
  c.sampling.num_samples = 64
  c.eval.quality_samples = 5000  # FID/KID of 5000 samples (inception for RGB) against the train split
  c.eval.quality_bootstrap = 10  # the FID's spread: each resample is a 2048-dim Frechet distance (seconds)
  return c

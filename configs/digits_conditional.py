"""The built-in digits, class-conditional, with classifier-free guidance (Ho & Salimans 2022).

    python main.py --config configs/digits_conditional.py --workdir workdirs/digits_cond
    python main.py --config configs/digits_conditional.py --workdir workdirs/digits_cond --mode sample
    python main.py --config configs/digits_conditional.py --workdir workdirs/digits_cond --mode eval

The UNet of configs/digits.py with a label embedding, trained with 10% of the labels
replaced by the null label. Training previews and --mode sample draw a row per class.
--mode eval scores 297 samples (every class in turn) at each guidance scale w in
eval.guidance_scales: the share of samples that a classifier trained on the train split
assigns to the requested class, and the dataset FID, as a table in the log and
guidance_<step>.png. Expected on 2 CPU cores: EXPECTED.
"""

from configs import digits


def get_config():
  c = digits.get_config()
  c.model.class_conditional = True
  c.training.label_dropout = 0.1
  c.sampling.guidance_scale = 1.0
  c.sampling.labels = "all"
  c.sampling.num_samples = 100  # 10 per class
  c.sampling.preview_samples = 100
  c.eval.guidance_scales = (0.0, 1.0, 2.0, 4.0)
  return c

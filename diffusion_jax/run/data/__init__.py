"""The data of a run: datasets (`sources`, `toys`), your own images (`folder`, `arrays`) and the standard datasets
(`standard`) prepared into records (`prepared`), the record format (`records`), the training stream and the
evaluation pass (`pipeline`), and the scaling of pixels to the model's input.

Host batches are uint8 images (NHWC) or float32 points; `to_model_input` scales images to [-1, 1] on the
device. The names below are the package's interface to the rest of the runtime.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.run.data.pipeline import (
    check_batch_divisibility,
    eval_batches,
    flips,
    iterate,
    num_examples,
    stream_indices,
    train_batches,
)
from diffusion_jax.run.data.records import center_crop
from diffusion_jax.run.data.sources import (
    CROP_SIZES,
    DATASETS,
    DIGITS_TEST_SIZE,
    IMAGE_DATASETS,
    TOY_DATASETS,
    DatasetInfo,
    check_dataset_name,
    dataset_info,
    image_records,
    image_source,
    tfds_source,
)
from diffusion_jax.run.data.toys import toy_points, toy_reference

__all__ = [
    "CROP_SIZES", "DATASETS", "DIGITS_TEST_SIZE", "IMAGE_DATASETS", "TOY_DATASETS", "DatasetInfo",
    "center_crop", "check_batch_divisibility", "check_dataset_name", "dataset_info", "eval_batches", "flips",
    "image_records", "image_source", "iterate", "num_examples", "stream_indices", "to_model_input", "to_uint8",
    "tfds_source", "toy_points", "toy_reference", "train_batches",
]


def to_model_input(x: jax.Array) -> jax.Array:
  """uint8 pixels -> float32 in [-1, 1] (x / 127.5 - 1); float points pass through."""
  if x.dtype == jnp.uint8:
    return x.astype(jnp.float32) / 127.5 - 1.0
  return x.astype(jnp.float32)


def to_uint8(x: jax.Array | np.ndarray) -> np.ndarray:
  """float in [-1, 1] -> uint8 pixels, rounding to the nearest level (NaN, from a diverged model, -> 0)."""
  x = np.nan_to_num(np.asarray(x, np.float32), nan=-1.0)
  return np.asarray(np.clip(np.round((x + 1.0) * 127.5), 0, 255), np.uint8)

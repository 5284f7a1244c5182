"""The input-pipeline benchmark's dataset, in a module of its own: grain's worker processes import it once each."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from diffusion_jax.run.data import sources

NAME = "random_cifar10"


class RandomCifar10(tfds.core.GeneratorBasedBuilder):
  """`--records` uniform random 32x32x3 uint8 images and labels: CIFAR-10's shapes, stored raw (no PNG)."""

  VERSION = tfds.core.Version("1.0.0")
  name = NAME
  num_records = 50_000

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8),
        "label": tfds.features.ClassLabel(num_classes=10)}))

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    return {"train": self._generate_examples(self.num_records, 0), "test": self._generate_examples(1000, 1)}

  def _generate_examples(self, n: int, seed: int):
    rng = np.random.default_rng(seed)
    for i in range(n):
      yield i, {"image": rng.integers(0, 256, (32, 32, 3), np.uint8), "label": int(rng.integers(10))}


def register() -> None:
  """Adds the dataset to the image datasets `data.dataset` may name, in this process only."""
  if NAME not in sources.DATASETS:
    sources.IMAGE_DATASETS += (NAME,)
    sources.DATASETS += (NAME,)

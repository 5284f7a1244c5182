"""A feature network for small image datasets where Inception means little (8x8 digits, 28x28 MNIST).

A small CNN trained once on the dataset's train split and cached: its
penultimate features give a "dataset FID", its predictions the share of
confidently classified samples and the class balance. Training is
deterministic (seed, full passes in a fixed shuffled order), so the cached
file is the network a re-run would train.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from diffusion_jax import files
from diffusion_jax.checks import is_int

FEATURE_DIM = 32
VERSION = 1  # bump when the architecture or the training recipe changes: old cache files are then ignored


class Classifier(nn.Module):
  """logits, features = f(x) for images in [-1, 1]: conv 32 - pool - conv 64 - pool - dense 32 (features) - dense K."""

  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B, H, W, C) float -> (logits (B, K), features (B, FEATURE_DIM))."""
    for width in (32, 64):
      x = nn.relu(nn.Conv(width, (3, 3), padding="SAME")(x))
      x = nn.avg_pool(x, (2, 2), (2, 2))
    features = nn.relu(nn.Dense(FEATURE_DIM)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes)(features), features


def train(images: np.ndarray, labels: np.ndarray, num_classes: int, *, epochs: int = 30, batch_size: int = 128,
          seed: int = 0) -> Any:
  """Parameters of a `Classifier` trained with Adam on uint8 images and integer labels.

  Args:
    images: uint8 `(N, H, W, C)`.
    labels: int `(N,)` in `[0, num_classes)`.
    num_classes: K.
    epochs: full passes over the data.
    batch_size: examples per step.
    seed: initialisation and order.

  Returns:
    The parameter tree.
  """
  labels = np.asarray(labels)
  if not is_int(num_classes) or num_classes < 2 or labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"labels must lie in [0, num_classes = {num_classes}), got [{labels.min()}, {labels.max()}].")
  model = Classifier(num_classes)
  x = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
  y = jnp.asarray(labels, jnp.int32)
  params = model.init(jax.random.key(seed), x[:1])["params"]
  tx = optax.adam(1e-3)

  @jax.jit
  def step(params: Any, opt_state: Any, idx: jax.Array) -> tuple[Any, Any, jax.Array]:
    def loss_fn(p: Any) -> jax.Array:
      logits, _ = model.apply({"params": p}, x[idx])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = tx.init(params)
  rng = np.random.default_rng(seed)
  n = len(labels)
  for epoch in range(epochs):
    order = rng.permutation(n)
    for start in range(0, n - batch_size + 1, batch_size):
      params, opt_state, loss = step(params, opt_state, jnp.asarray(order[start:start + batch_size]))
    if epoch % 10 == 9 or epoch == epochs - 1:
      logging.info("feature classifier: epoch %d/%d, loss %.4f", epoch + 1, epochs, float(loss))
  return params


def apply(params: Any, num_classes: int, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(logits, features) of uint8 images `(B, H, W, C)`. Jit it."""
  return Classifier(num_classes).apply({"params": params}, images.astype(jnp.float32) / 127.5 - 1.0)


def _flat(tree: Any) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def load_or_train(path: str, image_shape: tuple[int, ...], num_classes: int,
                  train_data: Callable[[], tuple[np.ndarray, np.ndarray]]) -> Any:
  """The classifier cached at `path` (`.npz`), or one trained on `train_data()` (images, labels), written there first.

  `train_data` is called only when there is no valid cached classifier.
  """
  template = Classifier(num_classes).init(jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32))["params"]
  if os.path.exists(path):
    with np.load(path) as f:
      stored = dict(f)
    wanted = _flat(template)
    if set(stored) == set(wanted) and all(stored[k].shape == v.shape for k, v in wanted.items()):
      leaves = [stored[jax.tree_util.keystr(p)] for p, _ in jax.tree_util.tree_flatten_with_path(template)[0]]
      return jax.tree.unflatten(jax.tree.structure(template), leaves)
    logging.warning("Ignoring %s: not a classifier for this dataset; training a new one.", path)
  images, labels = train_data()
  logging.info("Training the feature classifier on %d images (once; cached at %s).", len(labels), path)
  params = train(images, labels, num_classes)
  files.write_npz(path, _flat(params))
  return params

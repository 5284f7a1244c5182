"""The quality figure of a run: its samples scored against the train split, beside a real-data baseline.

Which figure depends on the data (`eval.quality_metric = 'auto'`):

- `inception` (CIFAR-10; any image data on request): FID and KID of Inception-v3
  pool features (`metrics.inception`) against the train split's statistics.
- `classifier` (digits, MNIST, Fashion-MNIST): the same Frechet distance on the
  features of a small classifier trained once on the train split ("dataset FID"),
  the share of samples it classifies with probability >= 0.9, and the balance of
  its predicted classes (entropy / log K: 1 is uniform).
- `energy` (2-D toys): the energy distance to as many held-out points.

Every figure comes with its baseline: the same figure for as many real examples
of the test split as there are samples (all of the split where it has fewer, e.g.
CIFAR-10's 10,000 against the FID's 50,000 samples: the log says how many), so that
a number can be read: a model is as good as the data when it scores its baseline.
For the toys the baseline is the mean over disjoint draws of training points, each
against the same held-out points: one draw's figure spreads over 0.4-2.8x its mean.
The train split's statistics (and the classifier) are computed once and cached.

Every figure comes with its spread, `<figure>_std`: the standard deviation of the
figure over `eval.quality_bootstrap` bootstrap resamples of the scored features
(the baseline's too; for the toys' mean of draws, its standard error), an estimate
of how far another draw of as many samples would move it. KID keeps its own
`kid_std` over its subsets. A difference between a model and real data smaller
than about twice the spreads is not a difference.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion_jax import files
from diffusion_jax.metrics import inception, inception_weights, stats
from diffusion_jax.run import classifier, compiler, data, parallel
from diffusion_jax.run import config as config_lib
from diffusion_jax.run.logs import Progress

METRICS = config_lib.QUALITY_METRICS
CONFIDENT = 0.9  # a sample is confidently classified when the classifier's top probability reaches this
_KID_REFERENCE = 5000  # train features kept for KID
_BATCH = 64  # images per compiled feature call (times the device count)


def headline(figures: dict[str, float]) -> list[str]:
  """The names of the figures themselves, without their spreads (`<figure>_std`)."""
  return [k for k in figures if not k.endswith("_std")]


def with_spread(figures: dict[str, float], name: str) -> str:
  """`1.071 +- 0.15`: a figure (4 digits) and its spread (2) where `figures` has one."""
  spread = figures.get(f"{name}_std")
  return f"{figures[name]:.4g}" + ("" if spread is None else f" +- {spread:.2g}")


def resolve_metric(config: ml_collections.ConfigDict, info: data.DatasetInfo) -> str:
  """`eval.quality_metric`, with `auto` resolved for the dataset; `ValueError` where it cannot apply."""
  metric = config.eval.quality_metric
  if metric not in METRICS:
    raise ValueError(f"eval.quality_metric = {metric!r} is invalid; allowed: {', '.join(METRICS)}.")
  if metric == "auto":
    metric = "energy" if not info.is_image else "inception" if info.shape[-1] == 3 else "classifier"
  if (metric == "energy") == info.is_image:
    raise ValueError(f"eval.quality_metric = {metric!r} does not apply to data.dataset = {info.name!r}; "
                     f"{'energy is for 2-D points' if info.is_image else 'use energy for 2-D points'}.")
  if metric == "classifier" and not info.num_classes:
    raise ValueError(f"eval.quality_metric = 'classifier' needs labels, and data.dataset = {info.name!r} has "
                     "none; use 'inception'.")
  return metric


def feature_dim(metric: str) -> int:
  """The dimension of the features `metric` compares (2 for points)."""
  return {"inception": inception.FEATURE_DIM, "classifier": classifier.FEATURE_DIM, "energy": 2}[metric]


def check_quality_config(config: ml_collections.ConfigDict, info: data.DatasetInfo) -> str:
  """Validates the `eval.quality_*` keys for `info` before anything compiles; returns the resolved metric.

  Raises:
    ValueError: a metric that does not apply, Inception weights that it would ignore, too few samples for the
      feature dimension.
    FileNotFoundError: the inception metric without its weights file.
  """
  metric = resolve_metric(config, info)
  if metric == "inception":
    inception_weights.check_weights_path(config.eval.inception_weights)
  elif config.eval.inception_weights is not None:
    raise ValueError(f"eval.inception_weights = {config.eval.inception_weights!r} is given, but the quality metric of "
                     f"data.dataset = {info.name!r} is {metric!r} (eval.quality_metric = "
                     f"{config.eval.quality_metric!r}), which does not use it; set eval.quality_metric = 'inception' "
                     "to score with the Inception network, or leave eval.inception_weights unset.")
  n = config.eval.quality_samples
  dim = feature_dim(metric)
  if metric != "energy" and n <= dim:
    raise ValueError(
        f"eval.quality_samples = {n} is too few for the {dim}-dimensional {metric} features: their covariance "
        f"would be singular and the Frechet distance would mostly measure the sample size, not the model. Use "
        f"more than {dim} (the FID standard is 50,000).")
  return metric


@dataclasses.dataclass
class Reference:
  """What samples are compared with: the train split's feature statistics (or held-out points)."""

  mean: np.ndarray | None = None
  cov: np.ndarray | None = None
  features: np.ndarray | None = None  # train features for KID, or held-out points for `energy`


def _to_uint8(x: np.ndarray) -> np.ndarray:
  return data.to_uint8(x) if x.dtype != np.uint8 else x


class Scorer:
  """Scores batches of samples of one run's data against its train split (built once, caches on disk).

  Args:
    config: the experiment config (`eval.*` keys, `data.*`).
    info: the dataset.
    mesh: the device mesh the feature network's batch is sharded over.
    metric: the metric `check_quality_config` resolved, before anything compiled.
  """

  def __init__(self, config: ml_collections.ConfigDict, info: data.DatasetInfo, mesh: jax.sharding.Mesh,
               metric: str):
    self.config, self.info, self.mesh, self.metric = config, info, mesh, metric
    self.num_samples = config.eval.quality_samples
    self.cache_dir = config.eval.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "diffusion_jax")
    # The train split's images and labels, read on first need (the classifier, the statistics), then kept.
    self._train_split = functools.cache(lambda: self._split_arrays("train"))
    self._features = self._feature_fn()
    self.reference = self._reference()
    if self.metric == "energy":  # one draw's figure spreads over 0.4-2.8x its mean: the mean of disjoint draws
      draws = [self._figures(d, None, None)["energy_distance"] for d in self._toy_draws()]
      self.baseline_samples, self.baseline_draws = self.num_samples, len(draws)
      self.baseline = {"energy_distance": float(np.mean(draws))}
      if len(draws) > 1:  # the standard error of that mean
        self.baseline["energy_distance_std"] = float(np.std(draws, ddof=1) / np.sqrt(len(draws)))
    else:
      real, real_labels = self._split_arrays(self.config.eval.split, self.num_samples)
      self.baseline_samples, self.baseline_draws = len(real), 1  # fewer than num_samples if the split is smaller
      self.baseline = self.score(real, "baseline (test split)", real_labels if self.metric == "classifier" else None)

  # ------------------------------------------------------------------ features

  def _feature_fn(self) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]] | None:
    """uint8 images -> (features, logits or None), batched and sharded over the mesh."""
    if self.metric == "energy":
      return None
    if self.metric == "inception":
      params = inception_weights.load_params(self.config.eval.inception_weights, self.cache_dir)
      fn = lambda p, x: (inception.features(p, x), jnp.zeros((x.shape[0], 0)))
    else:
      path = os.path.join(self.cache_dir, f"classifier-{self._data_id()}-v{classifier.VERSION}.npz")
      params = classifier.load_or_train(path, self.info.shape, self.info.num_classes, self._train_split)
      k = self.info.num_classes
      fn = lambda p, x: tuple(reversed(classifier.apply(p, k, x)))
    self.network_id = inception_weights.params_hash(params)[:12]  # names the cached statistics of these weights
    sharding = parallel.batch_sharding(self.mesh)
    jitted = compiler.jit(fn, in_shardings=(parallel.replicated(self.mesh), sharding))
    batch = _BATCH * jax.device_count()
    progress = Progress()

    def features(images: np.ndarray, label: str = "features", done: int = 0,
                 total: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
      """Features of `images`; one progress line over `total` images of which `done` came before these."""
      n = len(images)
      if done == 0:
        progress.start(f"{self.metric} {label}", total or n, unit="images")
      feats, logits = [], []
      for start in range(0, n, batch):
        chunk = images[start:start + batch]
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), np.uint8)])
        # Every host holds all the images; each places its devices' shards (also across hosts).
        placed = jax.make_array_from_callback(padded.shape, sharding, padded.__getitem__)
        f, lg = jitted(params, placed)
        feats.append(parallel.gather(f)[:len(chunk)])
        logits.append(parallel.gather(lg)[:len(chunk)])
        progress.update(done + start + len(chunk))
      return np.concatenate(feats).astype(np.float64), np.concatenate(logits).astype(np.float64)

    return features

  # ------------------------------------------------------------------ data

  def _data_id(self) -> str:
    """Names the data the cached statistics are of: the prepared records' directory (whose name holds a folder's
    fingerprint), else TFDS's data directory."""
    where = self.info.records or os.path.abspath(
        os.path.expanduser(self.config.data.data_dir or "~/tensorflow_datasets"))
    return f"{self.info.name}-{hashlib.sha1(where.encode()).hexdigest()[:8]}"

  def _split_arrays(self, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The first `limit` (all) images of `split` in memory, and their labels if any."""
    records = data.image_records(self.info, split, self.config.data.data_dir)
    n = len(records) if limit is None else min(limit, len(records))
    examples = [records[i] for i in range(n)]
    images = np.stack([e["x"] for e in examples])
    labels = np.array([int(e["label"]) for e in examples]) if "label" in examples[0] else None
    return images, labels

  def _toy_draws(self) -> list[np.ndarray]:
    """Disjoint draws of `num_samples` training points: real, and independent of the held-out reference."""
    train = data.toy_points(self.info.name, "train")
    return [train[i:i + self.num_samples] for i in range(0, len(train) - self.num_samples + 1, self.num_samples)]

  def _reference(self) -> Reference:
    if self.metric == "energy":
      return Reference(features=data.toy_points(self.info.name, "test"))
    path = os.path.join(self.cache_dir, f"reference-{self._data_id()}-{self.metric}-{self.network_id}.npz")
    if os.path.exists(path):
      with np.load(path) as f:
        return Reference(f["mean"], f["cov"], f["features"])
    ref = self.train_statistics()
    files.write_npz(path, {"mean": ref.mean, "cov": ref.cov, "features": ref.features})
    return ref

  def train_statistics(self, chunk: int = 2048) -> Reference:
    """Mean and covariance of the train split's features, streamed in chunks of images (LSUN does not fit in
    memory), and the features of `_KID_REFERENCE` examples drawn from the seed, in the drawn order."""
    records = data.image_records(self.info, "train", self.config.data.data_dir)
    n = len(records)
    keep = np.random.default_rng(0).permutation(n)[:_KID_REFERENCE]
    slot = np.full(n, -1)
    slot[keep] = np.arange(len(keep))
    running, kept = None, None
    for start in range(0, n, chunk):
      images = np.stack([records[i]["x"] for i in range(start, min(n, start + chunk))])
      feats, _ = self._features(images, "features of the train split (once; cached)", start, n)
      if running is None:
        running, kept = stats.RunningStats(feats.shape[1]), np.empty((len(keep), feats.shape[1]))
      running.update(feats)
      here = slot[start:start + len(feats)]
      kept[here[here >= 0]] = feats[here >= 0]
    return Reference(running.mean, running.cov, kept)

  # ------------------------------------------------------------------ scores

  def score(self, samples: np.ndarray, label: str = "samples", labels: np.ndarray | None = None) -> dict[str, float]:
    """The figures of `samples` (images in [-1, 1] or uint8, or points) against the reference, with their spreads.

    Args:
      samples: the samples.
      label: what the progress lines call them.
      labels: the class each sample was drawn for (class-conditional); with the classifier metric it adds
        `class_agreement`, the share the classifier assigns to that class.

    Returns:
      `{energy_distance}`, `{fid, kid, kid_std}` or `{dataset_fid, confident_share, class_balance}`
      (+ `class_agreement`), and `<figure>_std` for each (with `eval.quality_bootstrap` > 0).
    """
    if self.metric == "energy":
      feats, probs = np.asarray(samples, np.float64), None
    else:
      feats, logits = self._features(_to_uint8(np.asarray(samples)), label)
      probs = np.asarray(jax.nn.softmax(logits, axis=-1), np.float64)
    labels = None if labels is None else np.asarray(labels)
    figures = self._figures(feats, probs, labels, with_kid=True)
    resamples = self.config.eval.quality_bootstrap
    if resamples:
      pick = lambda a, i: None if a is None else a[i]
      spread = stats.bootstrap_std(lambda i: self._figures(feats[i], pick(probs, i), pick(labels, i)), len(feats),
                                   num_resamples=resamples)
      figures.update({f"{k}_std": v for k, v in spread.items()})
    return figures

  def _figures(self, feats: np.ndarray, probs: np.ndarray | None, labels: np.ndarray | None,
               with_kid: bool = False) -> dict[str, float]:
    """The figures of features (or points), the classifier's probabilities and the drawn labels; KID on request."""
    if self.metric == "energy":
      return {"energy_distance": stats.energy_distance(feats, self.reference.features[:len(feats)])}
    running = stats.RunningStats(feats.shape[1]).update(feats)
    fd = stats.frechet_distance(running.mean, running.cov, self.reference.mean, self.reference.cov)
    if self.metric == "inception":
      if not with_kid:
        return {"fid": fd}
      ec = self.config.eval
      kid, kid_std = stats.kid(feats, self.reference.features, num_subsets=ec.kid_subsets,
                               subset_size=ec.kid_subset_size)
      return {"fid": fd, "kid": kid, "kid_std": kid_std}
    counts = np.bincount(np.argmax(probs, -1), minlength=self.info.num_classes) / len(probs)
    entropy = -np.sum(counts * np.log(np.where(counts > 0, counts, 1.0)))
    figures = {"dataset_fid": fd, "confident_share": float(np.mean(np.max(probs, -1) >= CONFIDENT)),
               "class_balance": float(entropy / np.log(self.info.num_classes))}
    if labels is not None:
      figures["class_agreement"] = float(np.mean(np.argmax(probs, -1) == labels))
    return figures

  def report(self, figures: dict[str, float], short: bool = False) -> str:
    """`fid 12.3 +- 0.4, ... (real data, 297 test examples: fid 1.2 +- 0.1, ...)` for a log line (+- the spread);
    `short`: the headline figure alone, `energy_distance 0.0022 = 1.20x real data's 0.00183`, for a plot's title."""
    shown = [k for k in headline(figures) if k in self.baseline]
    if short:
      k = shown[0]
      return f"{k} {figures[k]:.3g} = {figures[k] / self.baseline[k]:.2f}x real data's {self.baseline[k]:.3g}"
    real = (f"the mean of {self.baseline_draws} draws of {self.baseline_samples} training points"
            if self.metric == "energy" else f"{self.baseline_samples} held-out examples")
    return (", ".join(f"{k} {with_spread(figures, k)}" for k in shown) + f" (real data, {real}: "
            + ", ".join(f"{k} {with_spread(self.baseline, k)}" for k in shown) + ")")

  def as_metrics(self, figures: dict[str, float]) -> dict[str, float]:
    """`quality/<figure>`, `quality/<figure>_baseline` and their spreads (`..._std`), for metrics.jsonl and
    TensorBoard."""
    out = {f"quality/{k}": float(v) for k, v in figures.items()}
    for k in headline(self.baseline):
      out[f"quality/{k}_baseline"] = float(self.baseline[k])
      if f"{k}_std" in self.baseline:
        out[f"quality/{k}_baseline_std"] = float(self.baseline[f"{k}_std"])
    return out

  def write(self, path: str, figures: dict[str, float], **extra: Any) -> None:
    """The figures, their baselines and `extra` as JSON."""
    files.write_json(path, {"metric": self.metric, "num_samples": self.num_samples, "figures": figures,
                            "baseline": self.baseline, "baseline_samples": self.baseline_samples,
                            "baseline_draws": self.baseline_draws, **extra})


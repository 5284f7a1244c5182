"""The input pipeline on a real TFDS dataset built locally (digits), and the toy distributions."""

import os

import jax
import numpy as np
import pytest
import scipy.stats
import tensorflow_datasets as tfds
from scipy import spatial
from scipy.spatial import distance

from configs import tiny
from diffusion_jax.metrics import stats
from diffusion_jax.run import data
from diffusion_jax.run.data import pipeline, records, toys
from helpers import tiny_config as _config


def test_digits_is_a_real_tfds_dataset_read_through_data_source(data_dir):
  info = data.dataset_info(_config(data_dir))
  assert info == data.DatasetInfo("digits", (8, 8, 1), 10, True, tuple("0123456789"))
  root = os.path.join(data_dir, "digits", "1.0.0")
  assert any(f.startswith("digits-train.array_record") for f in os.listdir(root))
  train = data.tfds_source("digits", "train", data_dir)
  test = data.tfds_source("digits", "test", data_dir)
  assert len(train) == 1797 - data.DIGITS_TEST_SIZE and len(test) == data.DIGITS_TEST_SIZE
  images = np.stack([train[i]["image"] for i in range(len(train))])
  assert images.dtype == np.uint8 and images.shape[1:] == (8, 8, 1)
  assert images.min() == 0 and images.max() == 255
  assert sorted({int(train[i]["label"]) for i in range(len(train))}) == list(range(10))


def _train_batches(c, **kwargs):
  return data.train_batches(c, data.dataset_info(c), **kwargs)


class _TensorImages(tfds.core.GeneratorBasedBuilder):
  """Every uint8 level in images stored as int64 lists (`Tensor`), labels of up to three varint bytes."""

  VERSION = tfds.core.Version("1.0.0")
  name = "diffusion_jax_test_tensor_images"

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(5, 7, 3), dtype=np.uint8),
        "label": tfds.features.ClassLabel(num_classes=100_000)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    rng = np.random.default_rng(0)
    for i in range(300):
      image = rng.integers(0, 256, (5, 7, 3), np.uint8)
      image.flat[:3] = [0, 127 + i % 2, 255]  # the varints' edges: one byte, two bytes
      yield i, {"image": image, "label": int(rng.choice([0, 127, 128, 16_383, 16_384, 99_999]))}


class _BytesImages(_TensorImages):
  """The same images stored as one `bytes` value each (as encoded images are): TFDS's own decoding reads them."""

  name = "diffusion_jax_test_bytes_images"

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(5, 7, 3), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES),
        "label": tfds.features.ClassLabel(num_classes=100_000)}))


@pytest.mark.parametrize("builder_class, parsed", [(_TensorImages, True), (_BytesImages, False)])
def test_batches_read_exactly_what_tfds_decodes(tmp_path, builder_class, parsed):
  """Batches parsed from the protos' packed int64 lists (or, for images stored as bytes, TFDS's decoding) hold exactly
  the records TFDS's per-example decoding gives, flipped where `flips` draws it."""
  builder = builder_class(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  source = builder.as_data_source(split="train")
  decode = records.batch_decoder(source, None)
  assert records.stores_int64_tensors(source) == parsed
  assert (decode.func is records.parse_int64_tensors) == parsed  # the fast path is the one taken where it applies
  indices = np.random.default_rng(1).permutation(300)[:200]
  expected = [source[int(i)] for i in indices]
  for flip_seed in [None, 3]:
    batch = pipeline.read_batch(decode, flip_seed, 4, indices)
    assert batch["x"].dtype == np.uint8 and batch["label"].dtype == np.int32
    mirrored = np.zeros(200, bool) if flip_seed is None else data.flips(flip_seed, 800 + np.arange(200))
    assert 0 < mirrored.sum() < 200 or flip_seed is None
    for image, label, e, m in zip(batch["x"], batch["label"], expected, mirrored):
      np.testing.assert_array_equal(image, e["image"][:, ::-1] if m else e["image"])
      assert label == e["label"]
  assert {int(e["label"]) for e in expected} == {0, 127, 128, 16_383, 16_384, 99_999}


def test_records_that_are_not_packed_uint8_lists_are_refused(tmp_path):
  """Images stored as bytes read through the int64-list parser give no values: a clear error, not a wrong batch."""
  builder = _BytesImages(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  source = builder.as_data_source(split="train")
  with pytest.raises(ValueError, match=r"hold 0 image values, not 4 x \(5, 7, 3\): not a packed list of uint8"):
    records.parse_int64_tensors(source, (5, 7, 3), [0, 1, 2, 3])


def test_train_batches_deterministic_and_each_epoch_a_permutation(data_dir):
  c = _config(data_dir, global_batch_size=100)
  ds = _train_batches(c)
  n = 1797 - data.DIGITS_TEST_SIZE
  epoch = np.concatenate([ds[s]["x"][0] for s in range(n // 100)])  # 15 batches = one epoch exactly
  flat = epoch.reshape(len(epoch), -1)
  source = data.tfds_source("digits", "train", data_dir)
  originals = np.stack([source[i]["image"] for i in range(n)]).reshape(n, -1)
  # Every example exactly once (as a multiset of images: some digits repeat pixel-for-pixel).
  assert sorted(map(bytes, flat)) == sorted(map(bytes, originals))
  np.testing.assert_array_equal(_train_batches(c)[7]["x"][0], ds[7]["x"][0])  # same seed, same batch
  second = np.concatenate([ds[s]["x"][0] for s in range(n // 100, 2 * n // 100)])
  assert not np.array_equal(second, epoch)  # a new permutation next epoch
  c.seed = 1
  assert not np.array_equal(_train_batches(c)[0]["x"][0], ds[0]["x"][0])


@pytest.mark.parametrize("flip", [False, True])
def test_hosts_read_disjoint_shares_of_the_same_global_batch(data_dir, flip):
  """Each of P hosts reads global_batch / P examples; together they are the 1-host global batch (flips too)."""
  c = _config(data_dir, global_batch_size=8)
  c.data.random_flip = flip
  whole = _train_batches(c)
  for step in [0, 5]:
    shares = [_train_batches(c, process_index=p, process_count=4) for p in range(4)]
    assert shares[0][step]["x"][0].shape == (2, 8, 8, 1)
    for key in ["x", "label"]:
      np.testing.assert_array_equal(np.concatenate([s[step][key][0] for s in shares]), whole[step][key][0])


def test_flips_are_a_fair_coin_per_position():
  """Over 100k positions the share of flips is 1/2 within 5 standard errors, each seed its own stream, and
  neighbouring positions are uncorrelated (the share of equal neighbours is 1/2 as well)."""
  f = data.flips(3, np.arange(100_000))
  se = 5 * 0.5 / np.sqrt(f.size)
  assert abs(f.mean() - 0.5) < se and abs((f[1:] == f[:-1]).mean() - 0.5) < se
  assert abs((f == data.flips(4, np.arange(100_000))).mean() - 0.5) < se


@pytest.mark.slow
def test_worker_processes_read_the_same_batches(data_dir):
  c = _config(data_dir, global_batch_size=8)
  c.data.random_flip = True
  ds = _train_batches(c)
  it = data.iterate(ds, 3, num_workers=2)
  for step in range(3, 9):
    got = next(it)
    np.testing.assert_array_equal(got["x"], ds[step]["x"])
    np.testing.assert_array_equal(got["label"], ds[step]["label"])


def test_random_flip_is_a_mirror_image_and_deterministic(data_dir):
  c = _config(data_dir, global_batch_size=64)
  plain = _train_batches(c)[3]["x"][0]
  c.data.random_flip = True
  flipped = _train_batches(c)[3]["x"][0]
  np.testing.assert_array_equal(_train_batches(c)[3]["x"][0], flipped)
  mirrored = np.array([not np.array_equal(a, b) for a, b in zip(plain, flipped)])
  np.testing.assert_array_equal(flipped[mirrored], plain[mirrored][:, :, ::-1])
  assert 0.25 < mirrored.mean() < 0.75  # ~ half, binomial(64, 0.5) within 4 sd (some digits are symmetric)


def test_steps_per_call_stacks_consecutive_batches(data_dir):
  c = _config(data_dir, global_batch_size=8)
  single = _train_batches(c)
  assert single[0]["x"].shape == (1, 8, 8, 8, 1)  # always a leading steps axis
  c.training.steps_per_call = 4
  stacked = _train_batches(c)[1]["x"]
  assert stacked.shape == (4, 8, 8, 8, 1)
  np.testing.assert_array_equal(stacked, np.stack([single[s]["x"][0] for s in range(4, 8)]))


def test_eval_batches_cover_the_split_once_with_padding_masked(data_dir):
  c = _config(data_dir)
  batches = list(data.eval_batches(c, data.dataset_info(c), "test", 100))
  assert len(batches) == 3
  assert sum(b["mask"].sum() for b in batches) == data.DIGITS_TEST_SIZE
  assert batches[-1]["mask"][:97].all() and not batches[-1]["mask"][97:].any()
  # Each example exactly once, in order: the real rows are the split itself.
  source = data.tfds_source("digits", "test", data_dir)
  real = np.concatenate([b["x"][b["mask"] == 1] for b in batches])
  np.testing.assert_array_equal(real, np.stack([np.asarray(source[i]["image"]) for i in range(len(source))]))
  labels = np.concatenate([b["label"][b["mask"] == 1] for b in batches])
  np.testing.assert_array_equal(labels, [source[i]["label"] for i in range(len(source))])


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
  c = tiny.get_config()
  c.data.dataset = "mnist"
  c.data.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match=r"not prepared .*download_and_prepare\(file_format='array_record'\)"):
    data.dataset_info(c)


def test_unreadable_format_says_how_to_prepare_it(tfrecord_dir):
  """A dataset on disk in tfrecord (what tfds writes by default with TensorFlow) cannot be read randomly."""
  with pytest.raises(ValueError, match=r"stored as 'tfrecord'.*download_and_prepare\(file_format='array_record'\)"):
    data.dataset_info(_config(tfrecord_dir))


@pytest.mark.parametrize("name", data.TOY_DATASETS)
def test_toy_datasets(name):
  c = tiny.get_config()
  c.data.dataset = name
  c.training.global_batch_size = 256
  assert data.dataset_info(c) == data.DatasetInfo(name, (2,), None, False)
  x = _train_batches(c)[0]["x"][0]
  assert x.shape == (256, 2) and x.dtype == np.float32
  train = data.toy_points(name, "train")
  np.testing.assert_allclose(train.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(train.std(0), 1, atol=1e-5)
  # The first 78 batches of 256 (of one 20,000-point epoch) are distinct training points.
  batches = _train_batches(c)
  read = np.concatenate([batches[s]["x"][0] for s in range(78)])
  assert len(np.unique(read, axis=0)) == len(read)
  assert set(map(bytes, read)) <= set(map(bytes, train))


def test_stream_indices_are_a_fresh_permutation_each_epoch():
  n = 1000
  positions = np.arange(3 * n)
  order = data.stream_indices(7, n, positions)
  epochs = order.reshape(3, n)
  for e in epochs:
    np.testing.assert_array_equal(np.sort(e), np.arange(n))
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
  # Any positions, in any order and across an epoch's end, give the same records as the whole stream.
  pick = np.array([2999, 5, 999, 1000, 1500, 0])
  np.testing.assert_array_equal(data.stream_indices(7, n, pick), order[pick])
  assert not np.array_equal(data.stream_indices(8, n, positions[:n]), epochs[0])


def _sklearn_toy(name, n, seed):
  from sklearn import datasets
  if name == "swiss_roll":
    return datasets.make_swiss_roll(n, noise=0.5, random_state=seed)[0][:, [0, 2]]
  return datasets.make_moons(n, noise=0.05, random_state=seed)[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", data.TOY_DATASETS)
def test_toy_distributions_are_sklearns_law_drawn_iid(name):
  """The law: the energy distance to sklearn's generator within 4x its expectation for one law (a moon flipped is far
  over), and the same spread around it. i.i.d.: pairs of draws of 2000 score the expectation for independent draws,
  2 E||X - X'|| / 2000, within 4 standard errors; make_moons' evenly spaced angles score ~0.1x of it."""
  generate = toys.swiss_roll if name == "swiss_roll" else toys.two_moons
  ours, theirs = generate(np.random.default_rng(0), 4000), _sklearn_toy(name, 4000, 0)
  mean_distance = distance.pdist(ours).mean()
  assert stats.energy_distance(ours, theirs) < 4 * mean_distance * (2 / 4000)
  # The noise: distances to the nearest of 20,000 of sklearn's points, ours against sklearn's own (a Kolmogorov-Smirnov
  # p-value; measured 0.65 and 0.87, and 1e-55 for the swiss roll with noise 0.05 instead of 0.5).
  nearest = spatial.cKDTree(_sklearn_toy(name, 20_000, 1)).query
  assert scipy.stats.ks_2samp(nearest(ours)[0], nearest(theirs)[0]).pvalue > 1e-4
  draw = lambda seed: generate(np.random.default_rng(seed), 2000)
  pairs = [stats.energy_distance(draw(10 + i), draw(100 + i)) for i in range(40)]
  assert abs(np.mean(pairs) - mean_distance * 2 / 2000) < 4 * np.std(pairs) / np.sqrt(len(pairs))


def test_unknown_dataset():
  c = tiny.get_config()
  c.data.dataset = "imagenet21k"
  with pytest.raises(ValueError, match="Unknown data.dataset 'imagenet21k'; allowed: digits"):
    data.dataset_info(c)


def test_center_crop_takes_the_central_square():
  rng = np.random.default_rng(0)
  wide = rng.integers(0, 256, size=(256, 340, 3), dtype=np.uint8)
  np.testing.assert_array_equal(data.center_crop(wide, 256), wide[:, 42:298])
  tall = rng.integers(0, 256, size=(300, 256, 1), dtype=np.uint8)
  np.testing.assert_array_equal(data.center_crop(tall, 256), tall[22:278])
  big = np.full((512, 600, 3), 77, np.uint8)
  big[:, :44] = big[:, -44:] = 0  # outside the central square
  out = data.center_crop(big, 256)
  assert out.shape == (256, 256, 3) and out.dtype == np.uint8 and (out == 77).all()


def test_scaling_round_trip():
  x = np.arange(256, dtype=np.uint8)
  scaled = np.asarray(data.to_model_input(jax.numpy.asarray(x)))
  np.testing.assert_allclose(scaled, x / 127.5 - 1, atol=1e-7)
  np.testing.assert_array_equal(data.to_uint8(scaled), x)

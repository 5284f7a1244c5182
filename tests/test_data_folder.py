"""Your own images (`data.dataset = 'folder'` and `'arrays'`): the prepared records against PIL and NumPy done here,
the labels against the directory names, the held-out split, the fingerprint, bad input, and a killed preparation."""

import glob
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest

import helpers
from configs import tiny
from diffusion_jax.run import data
from diffusion_jax.run.data import arrays, prepared

N = 16  # the prepared side


def _config(tmp_path, **data_keys):
  c = tiny.get_config()
  c.model.class_conditional = False
  c.model.attn_resolutions = (8,)
  c.data.data_dir = str(tmp_path / "data_dir")
  c.data.dataset = "folder"
  c.data.image_size = N
  c.data.update(data_keys)
  return c


def _records(info, split):
  """Every record of `split`, read through TFDS's own decoding (not the pipeline's parser)."""
  source = data.image_source(info, split, None)
  return [source[i] for i in range(len(source))]


def _marked(i, shape=(N, N, 3)):
  """An image whose first pixel names it: (i % 256, i // 256, 7), the rest random from i."""
  image = np.random.default_rng(i).integers(0, 256, shape, np.uint8)
  image[0, 0, :3] = (i % 256, i // 256, 7)
  return image


def _ids(records):
  return sorted(int(r["image"][0, 0, 0]) + 256 * int(r["image"][0, 0, 1]) for r in records)


def _reference_resize(image, size):
  """Shorter side to `size` with PIL's bicubic filter, then the central square by NumPy slicing."""
  w, h = image.size
  scale = size / min(w, h)
  resized = np.asarray(image.resize((max(size, round(w * scale)), max(size, round(h * scale))), PIL.Image.BICUBIC))
  top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
  return resized[top:top + size, left:left + size]


def _formats_folder(root):
  """One image per format and mode, each N x N (no resize: the conversion alone), and its expected RGB pixels."""
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (N, N, 3), np.uint8)
  grey = rng.integers(0, 256, (N, N), np.uint8)
  alpha = rng.integers(0, 256, (N, N), np.uint8)
  expected = {}
  os.makedirs(root)

  def save(name, image, want, **kwargs):
    image.save(os.path.join(root, name), **kwargs)
    expected[name] = want

  save("rgb.png", PIL.Image.fromarray(rgb), rgb)
  save("rgb.bmp", PIL.Image.fromarray(rgb), rgb)
  save("rgb.webp", PIL.Image.fromarray(rgb), rgb, lossless=True)
  save("grey.png", PIL.Image.fromarray(grey), np.repeat(grey[..., None], 3, -1))
  # RGBA over white: a/255 * rgb + (1 - a/255) * 255.
  over_white = np.round(rgb * (alpha[..., None] / 255) + 255 * (1 - alpha[..., None] / 255))
  save("rgba.png", PIL.Image.fromarray(np.dstack([rgb, alpha])), over_white)
  save("grey16.png", PIL.Image.fromarray(grey.astype(np.uint16) * 257), np.repeat(grey[..., None], 3, -1))
  palette = rng.integers(0, 256, (256, 3), np.uint8)
  index = rng.integers(0, 256, (N, N), np.uint8)
  p_image = PIL.Image.fromarray(index, "P")
  p_image.putpalette(palette.reshape(-1).tolist())
  save("palette.png", p_image, palette[index])
  # A palette image with index 0 transparent: those pixels are white.
  transparent = palette[index].copy()
  transparent[index == 0] = 255
  save("palette_transparent.png", p_image, transparent, transparency=0)
  # An animated GIF: the first frame is read (GIF stores a palette: the frames use 256 grey levels exactly).
  frames = [PIL.Image.fromarray(grey).convert("P"), PIL.Image.fromarray(255 - grey).convert("P")]
  frames[0].save(os.path.join(root, "animated.gif"), save_all=True, append_images=frames[1:])
  expected["animated.gif"] = np.repeat(np.asarray(frames[0].convert("L"))[..., None], 3, -1)
  # JPEG is lossy: its expectation is PIL's own decoding of the same file.
  PIL.Image.fromarray(rgb).save(os.path.join(root, "photo.jpg"), quality=90)
  expected["photo.jpg"] = np.asarray(PIL.Image.open(os.path.join(root, "photo.jpg")).convert("RGB"))
  return expected


@pytest.mark.parametrize("channels", [3, 1])
def test_every_format_and_mode_is_converted_as_documented(tmp_path, channels):
  expected = _formats_folder(str(tmp_path / "images"))
  c = _config(tmp_path, image_dir=str(tmp_path / "images"), channels=channels, eval_fraction=0.0)
  info = data.dataset_info(c)
  assert info.shape == (N, N, channels) and info.num_classes is None and info.records
  got = [r["image"] for r in _records(info, "train")]
  names = sorted(expected)  # records are in path order
  assert len(got) == len(names)
  for name, image in zip(names, got):
    want = expected[name].astype(np.float64)
    if channels == 1:  # ITU-R 601-2 luma
      want = (want @ [0.299, 0.587, 0.114])[..., None]
    tolerance = 1 if name == "rgba.png" or channels == 1 else 0  # rounding of the blend and the luma
    np.testing.assert_allclose(image.astype(np.float64), np.round(want), atol=tolerance, err_msg=name)


def test_resize_by_the_shorter_side_and_centre_crop(tmp_path):
  root = tmp_path / "images"
  root.mkdir()
  rng = np.random.default_rng(1)
  shapes = {"wide.png": (20, 50), "tall.png": (47, 21), "big_square.png": (64, 64), "small.png": (9, 12)}
  sources = {}
  for name, (h, w) in shapes.items():
    sources[name] = PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8))
    sources[name].save(root / name)
  info = data.dataset_info(_config(tmp_path, image_dir=str(root), eval_fraction=0.0))
  got = [r["image"] for r in _records(info, "train")]
  for name, image in zip(sorted(shapes), got):
    np.testing.assert_array_equal(image, _reference_resize(sources[name], N), err_msg=name)
  with open(os.path.join(info.records, prepared.PREPARATION_FILE)) as f:
    assert '"upscaled": 1' in f.read()  # small.png


def _class_folder(root, counts, side=N):
  """Class folders of marked `side` x `side` PNGs: image i's first pixel names it."""
  ids, i = {}, 0
  for name, count in counts.items():
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for _ in range(count):
      PIL.Image.fromarray(_marked(i, (side, side, 3))).save(os.path.join(root, name, f"{i:04d}.png"))
      ids[i] = name
      i += 1
  return ids


def test_labels_are_the_sorted_subdirectories_and_the_split_is_disjoint_and_stable(tmp_path):
  root = str(tmp_path / "images")
  ids = _class_folder(root, {"zebra": 70, "ant": 90, "moth": 60})
  c = _config(tmp_path, image_dir=root, eval_fraction=0.2)
  c.model.class_conditional = True
  info = data.dataset_info(c)
  assert info.class_names == ("ant", "moth", "zebra") and info.num_classes == 3
  train, test = _records(info, "train"), _records(info, "test")
  for r in train + test:
    i = int(r["image"][0, 0, 0]) + 256 * int(r["image"][0, 0, 1])
    assert info.class_names[int(r["label"])] == ids[i]
    np.testing.assert_array_equal(r["image"], _marked(i))
  held = set(_ids(test))
  assert set(_ids(train)) | held == set(ids) and not set(_ids(train)) & held
  # About eval_fraction held out: within 4 binomial standard deviations of 0.2 * 220.
  assert abs(len(held) - 44) < 4 * np.sqrt(220 * 0.2 * 0.8)
  # Files added: the folder is prepared again, and no earlier file changes split.
  for i in range(220, 260):
    PIL.Image.fromarray(_marked(i)).save(os.path.join(root, "ant", f"{i:04d}.png"))
  grown = data.dataset_info(c)
  assert grown.records != info.records
  new_held = set(_ids(_records(grown, "test")))
  assert new_held & set(ids) == held and len(_records(grown, "train")) + len(new_held) == 260


def test_an_unchanged_folder_is_prepared_once_and_a_changed_one_again(tmp_path):
  root = str(tmp_path / "images")
  _class_folder(root, {"a": 12})
  c = _config(tmp_path, image_dir=root)
  first = data.dataset_info(c).records
  stamp = os.stat(os.path.join(first, "dataset_info.json")).st_mtime_ns
  assert data.dataset_info(c).records == first
  assert os.stat(os.path.join(first, "dataset_info.json")).st_mtime_ns == stamp  # not written again
  c.data.image_size = 8
  assert data.dataset_info(c).records != first  # settings are part of the key
  c.data.image_size = N
  path = os.path.join(root, "a", "0003.png")
  os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # the same bytes, touched
  assert data.dataset_info(c).records != first


def test_unreadable_files_are_skipped_and_counted_and_other_files_ignored(tmp_path, caplog):
  root = tmp_path / "images"
  _class_folder(str(root), {"a": 5})
  good = io.BytesIO()
  PIL.Image.fromarray(_marked(99, (40, 40, 3))).save(good, "PNG")
  (root / "a" / "truncated.png").write_bytes(good.getvalue()[:-200])
  (root / "a" / "garbage.jpg").write_bytes(b"not a jpeg")
  (root / "notes.txt").write_text("not an image")
  (root / ".hidden.png").write_bytes(b"ignored")
  with caplog.at_level("WARNING"):
    info = data.dataset_info(_config(tmp_path, image_dir=str(root), eval_fraction=0.0))
  assert _ids(_records(info, "train")) == list(range(5))
  assert "Skipped 2 unreadable images of folder" in caplog.text
  assert "a/garbage.jpg" in caplog.text and "a/truncated.png" in caplog.text


@pytest.mark.parametrize("make, match", [
    (lambda root: None, r"data.image_dir = '.*missing' is not a directory"),
    (lambda root: root.mkdir(), r"holds no image files \(allowed extensions: .png"),
    (lambda root: (root.mkdir(), (root / "a.txt").write_text("x")), r"holds no image files"),
    (lambda root: (root.mkdir(), (root / "bad.png").write_bytes(b"x")), r"No image of folder could be read"),
])
def test_bad_folders_fail_clearly_before_anything_is_written(tmp_path, make, match):
  root = tmp_path / ("missing" if "missing" in match else "images")
  make(root)
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    data.dataset_info(_config(tmp_path, image_dir=str(root)))
  written = tmp_path / "data_dir" / "diffusion_jax"
  assert not written.exists() or not os.listdir(written)


def test_class_conditional_needs_subdirectories(tmp_path):
  root = tmp_path / "images"
  root.mkdir()
  PIL.Image.fromarray(_marked(0)).save(root / "loose.png")
  c = _config(tmp_path, image_dir=str(root))
  c.model.class_conditional = True
  with pytest.raises(ValueError, match=r"takes the labels from the subdirectories .* and it has none"):
    data.dataset_info(c)
  (root / "cls").mkdir()
  PIL.Image.fromarray(_marked(1)).save(root / "cls" / "in.png")
  with pytest.raises(ValueError, match=r"but 1 images lie outside them \(the first: 'loose.png'\)"):
    data.dataset_info(c)


def test_arrays_are_prepared_like_a_folder(tmp_path):
  images = np.stack([_marked(i) for i in range(50)])
  labels = np.arange(50) % 4
  np.savez(tmp_path / "a.npz", images=images, labels=labels)
  c = _config(tmp_path, dataset="arrays", path=str(tmp_path / "a.npz"), image_size=None, eval_fraction=0.3)
  c.model.class_conditional = True
  info = data.dataset_info(c)
  assert info.shape == (N, N, 3) and info.class_names == ("0", "1", "2", "3")
  train, test = _records(info, "train"), _records(info, "test")
  assert sorted(_ids(train) + _ids(test)) == list(range(50)) and len(test) > 0
  assert _ids(test) == [i for i in range(50) if prepared.held_out(str(i), 0.3)]
  for r in train + test:
    i = _ids([r])[0]
    np.testing.assert_array_equal(r["image"], images[i])
    assert r["label"] == labels[i]
  # Another size: each image resized and cropped as a folder's; an .npy holds the images alone.
  np.save(tmp_path / "a.npy", images[:, :, :12])
  c = _config(tmp_path, dataset="arrays", path=str(tmp_path / "a.npy"), image_size=8, eval_fraction=0.0)
  got = [r["image"] for r in _records(data.dataset_info(c), "train")]
  for i, image in enumerate(got):
    np.testing.assert_array_equal(image, _reference_resize(PIL.Image.fromarray(images[i, :, :12]), 8))


@pytest.mark.parametrize("arrays_kwargs, match", [
    ({"pictures": np.zeros((4, 8, 8, 3), np.uint8)}, r"has no array 'images' \(it has \['pictures'\]\)"),
    ({"images": np.zeros((4, 8, 8, 3), np.float32)}, r"images are float32 of shape \(4, 8, 8, 3\); allowed: uint8"),
    ({"images": np.zeros((4, 8, 8), np.uint8)}, r"images are uint8 of shape \(4, 8, 8\); allowed: uint8 of shape"),
    ({"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": np.zeros(5, int)},
     r"labels are int64 of shape \(5,\); allowed: 4 integers >= 0"),
])
def test_bad_arrays_fail_clearly(tmp_path, arrays_kwargs, match):
  np.savez(tmp_path / "bad.npz", **arrays_kwargs)
  with pytest.raises(ValueError, match=match):
    arrays.load_arrays(str(tmp_path / "bad.npz"))


def test_a_killed_preparation_leaves_nothing_read_as_complete_and_a_rerun_equals_an_uninterrupted_one(
    tmp_path, monkeypatch):
  """kill -9 as the preparation starts, and as it writes (its first chunk written, its worker processes starting);
  then a preparation whose worker processes encode all but the first chunk writes exactly the records of one never
  interrupted that ran in a single process."""
  root = str(tmp_path / "images")
  _class_folder(root, {"a": 600, "b": 600}, side=48)
  c = _config(tmp_path, image_dir=root)
  code = ("import sys, ml_collections, json; from diffusion_jax.run.data import folder, prepared; "
          "prepared.PARALLEL_AFTER_S = 0; "
          "folder.prepare_folder(ml_collections.ConfigDict(json.loads(sys.argv[1])), False, 2)")
  prepared_root = os.path.join(c.data.data_dir, "diffusion_jax")
  for moment in ["started", "writing"]:
    proc = subprocess.Popen([sys.executable, "-c", code, c.data.to_json()], cwd=helpers.ROOT, env=helpers.env())
    mine = os.path.join(prepared_root, f"*.incomplete-*-{proc.pid}-*")
    deadline = time.time() + 60
    while not glob.glob(mine if moment == "started" else os.path.join(mine, "*-train.array_record-*")):
      assert proc.poll() is None and time.time() < deadline
      time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not [f for f in os.listdir(prepared_root) if ".incomplete-" not in f]  # nothing complete
  monkeypatch.setattr(prepared, "PARALLEL_AFTER_S", 0.0)  # the rerun: the first chunk here, the others in workers
  info = data.dataset_info(c)
  assert not [f for f in os.listdir(prepared_root) if ".incomplete-" in f]  # the leftovers are gone
  monkeypatch.setattr(prepared, "PARALLEL_AFTER_S", float("inf"))  # the reference: all in this process
  c2 = c.copy_and_resolve_references()
  c2.data.data_dir = str(tmp_path / "uninterrupted")
  clean = data.dataset_info(c2)
  shards = sorted(f for f in os.listdir(clean.records) if ".array_record-" in f)
  assert len(shards) == 2  # train, test
  assert sorted(f for f in os.listdir(info.records) if ".array_record-" in f) == shards
  for f in shards:
    assert (open(os.path.join(info.records, f), "rb").read() == open(os.path.join(clean.records, f), "rb").read())
  assert len(_records(info, "train")) + len(_records(info, "test")) == 1200


def _coloured_classes(root, per_class):
  """RGB images 20 x 24 (PNG and JPEG) in three class folders, each class a colour of its own, with noise."""
  rng = np.random.default_rng(3)
  colours = {"blue": (30, 60, 220), "green": (40, 200, 60), "red": (220, 40, 30)}
  for name, colour in colours.items():
    (root / name).mkdir(parents=True)
    for i in range(per_class):
      image = np.clip(np.asarray(colour) + rng.normal(0, 25, (20, 24, 3)), 0, 255).astype(np.uint8)
      PIL.Image.fromarray(image).save(root / name / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
  return sorted(colours)


def _folder_overrides(tmp_path):
  return [f"--config.data.image_dir={tmp_path / 'images'}", f"--config.data.data_dir={tmp_path / 'data_dir'}",
          "--config.data.dataset=folder", "--config.data.image_size=16", "--config.model.attn_resolutions=(8,)",
          "--config.eval.quality_samples=0", "--config.eval.num_examples=0"]


@pytest.mark.slow
def test_a_folder_of_classes_trains_samples_per_class_and_evaluates_through_main(tmp_path):
  names = _coloured_classes(tmp_path / "images", 100)
  workdir = str(tmp_path / "run")
  overrides = _folder_overrides(tmp_path)
  helpers.run_main("tiny.py", workdir, *overrides, "--config.training.num_train_steps=16")
  with open(os.path.join(workdir, "dataset_info.json")) as f:
    info = json.load(f)
  assert info["class_names"] == names and info["shape"] == [N, N, 3]  # the mapping, in the workdir
  helpers.run_main("tiny.py", workdir, *overrides, "--config.sampling.num_samples=12", mode="sample")
  with np.load(os.path.join(workdir, "samples_00000016.npz")) as f:
    assert f["samples"].shape == (12, N, N, 3)
    np.testing.assert_array_equal(f["labels"], np.arange(12) % 3)
  grid = np.asarray(PIL.Image.open(os.path.join(workdir, "samples_00000016.png")))
  assert (grid[:, :8] < 100).any()  # the class names, written left of their rows
  helpers.run_main("tiny.py", workdir, *overrides, mode="eval")
  with open(os.path.join(workdir, "eval_test_00000016.json")) as f:
    result = json.load(f)
  held = sum(prepared.held_out(f"{n}/{i:03d}.{'png' if i % 2 else 'jpg'}", 0.05) for n in names for i in range(100))
  assert result["num_examples"] == held > 0 and np.isfinite(result["bpd"])


@pytest.mark.slow
def test_two_processes_prepare_a_folder_once(tmp_path):
  """Two hosts (processes) on one file system: process 0 prepares, process 1 waits and reads the same records."""
  _coloured_classes(tmp_path / "images", 40)
  port = helpers.free_port()
  procs = [subprocess.Popen(
      helpers.main_command("tiny.py", str(tmp_path / "run"), *_folder_overrides(tmp_path),
                           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"),
      env=helpers.env(devices=1), cwd=helpers.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  try:
    outputs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-5000:]
  assert "Prepared folder in" in outputs[0] and "Prepared folder" not in outputs[1]
  assert len(os.listdir(tmp_path / "data_dir" / "diffusion_jax")) == 1

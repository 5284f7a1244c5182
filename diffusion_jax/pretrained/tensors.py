"""Tensor files read and written with NumPy alone: safetensors by its header, and PyTorch's zip `.bin` through
an unpickler that rebuilds tensors and accepts no other object.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections import OrderedDict
from typing import Any

import ml_dtypes
import numpy as np

from diffusion_jax import files

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


_TORCH_STORAGES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """The tensors of a `.safetensors` file, as NumPy arrays (bfloat16 as `ml_dtypes.bfloat16`).

  Raises:
    ValueError: the file is not a well-formed safetensors file, naming the tensor at fault.
  """
  with open(path, "rb") as f:
    blob = f.read()
  if len(blob) < 8:
    raise ValueError(f"{path} is not a safetensors file: {len(blob)} bytes.")
  n = int.from_bytes(blob[:8], "little")
  try:
    header = json.loads(blob[8:8 + n])
  except ValueError as e:
    raise ValueError(f"{path} is not a safetensors file: its header is not JSON ({e}).") from None
  data = memoryview(blob)[8 + n:]
  out = {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    dtype = _SAFETENSORS_DTYPES.get(entry.get("dtype"))
    if dtype is None:
      raise ValueError(f"{path}: tensor {name!r} has dtype {entry.get('dtype')!r}; "
                       f"readable: {sorted(_SAFETENSORS_DTYPES)}.")
    begin, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    if end - begin != np.dtype(dtype).itemsize * int(np.prod(shape)) or end > len(data):
      raise ValueError(f"{path}: tensor {name!r} of shape {shape} does not fit its data offsets [{begin}, {end}).")
    out[name] = np.frombuffer(data[begin:end], dtype).reshape(shape).copy()
  return out


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
  """Writes `tensors` as a `.safetensors` file (atomically: a temporary file, then a rename)."""
  names = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}
  header, offset, chunks = {}, 0, []
  for name in sorted(tensors):
    array = np.ascontiguousarray(tensors[name])
    if array.dtype not in names:
      raise ValueError(f"tensor {name!r} has dtype {array.dtype}; writable: {sorted(map(str, names))}.")
    raw = array.tobytes()
    header[name] = {"dtype": names[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  if metadata:
    header["__metadata__"] = dict(metadata)
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)
  with files.atomic_open(path, "wb") as f:
    f.write(len(encoded).to_bytes(8, "little"))
    f.write(encoded)
    for raw in chunks:
      f.write(raw)


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                    *unused: Any) -> np.ndarray:
  """torch._utils._rebuild_tensor_v2 for NumPy: the strided view of a flat storage, copied."""
  del unused
  item = storage.itemsize
  return np.lib.stride_tricks.as_strided(storage[offset:], tuple(size), [s * item for s in stride]).copy()


class _TorchUnpickler(pickle.Unpickler):
  """Unpickles a PyTorch state dict into NumPy arrays; any object but tensors and dicts is refused."""

  def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str, path: str):
    super().__init__(file)
    self.archive, self.prefix, self.path = archive, prefix, path

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) == ("collections", "OrderedDict"):
      return OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _rebuild_tensor
    if (module, name) == ("torch._utils", "_rebuild_parameter"):
      return lambda data, *unused: data
    if module == "torch" and name in _TORCH_STORAGES:
      return np.dtype(_TORCH_STORAGES[name])
    raise pickle.UnpicklingError(f"{self.path} holds a {module}.{name}, which a state dict of tensors does not; "
                                 "it is not read (only tensors are).")

  def persistent_load(self, pid: Any) -> np.ndarray:
    _, dtype, key, _, _ = pid
    if not isinstance(dtype, np.dtype):
      raise pickle.UnpicklingError(f"{self.path}: storage {key} has an unknown type {dtype!r}.")
    return np.frombuffer(self.archive.read(f"{self.prefix}/data/{key}"), dtype)


def read_torch_bin(path: str) -> dict[str, np.ndarray]:
  """The tensors of a PyTorch `torch.save` state dict (zip format), without torch.

  Raises:
    ValueError: not a zip-format state dict of tensors (e.g. the pre-1.6 format, or arbitrary objects).
  """
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path} is not a zip-format PyTorch file (torch >= 1.6 writes one); convert it to "
                     "safetensors, e.g. with diffusers' save_pretrained.")
  with zipfile.ZipFile(path) as archive:
    pkl = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(pkl) != 1:
      raise ValueError(f"{path} is a zip file without a PyTorch data.pkl.")
    prefix = pkl[0][:-len("/data.pkl")]
    order = archive.read(f"{prefix}/byteorder").decode() if f"{prefix}/byteorder" in archive.namelist() else "little"
    if order != "little":
      raise ValueError(f"{path} was written in {order}-endian byte order; only little-endian is read.")
    with archive.open(pkl[0]) as f:
      try:
        state = _TorchUnpickler(f, archive, prefix, path).load()
      except pickle.UnpicklingError as e:
        raise ValueError(str(e)) from None
  if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
    raise ValueError(f"{path} does not hold a state dict of tensors.")
  return dict(state)

"""The records: a batch of TFDS array_record records parsed straight from their bytes, where the images are stored as
uint8 tensors (TFDS writes such a tensor as a `tf.train.Example` `int64_list` of packed varints, which its own parser
turns into one Python int per value); the same records encoded without TensorFlow (`encode_record`, what
`prepared` writes); and TFDS's decoded examples as records, cropped where a dataset needs it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from tensorflow_datasets.core.data_sources import array_record


def _packed_example_class() -> type:
  """A message class for serialized `tf.train.Example`s that reads each `int64_list` as the raw bytes of its packed
  varints: a packed repeated field and a `bytes` field share one wire format, so parsing skips the per-value decoding
  (and Python ints) of TFDS's parser; `uint8_values` decodes a whole batch at once with NumPy."""
  F = descriptor_pb2.FieldDescriptorProto
  proto = descriptor_pb2.FileDescriptorProto(name="diffusion_jax/packed_example.proto", package="diffusion_jax",
                                             syntax="proto3")
  for name, fields, is_map_entry in [
      ("PackedInt64List", [("value", 1, F.TYPE_BYTES, F.LABEL_OPTIONAL, None)], False),
      ("PackedFeature", [("int64_list", 3, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, "PackedInt64List")], False),
      ("PackedFeatureEntry", [("key", 1, F.TYPE_STRING, F.LABEL_OPTIONAL, None),
                              ("value", 2, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, "PackedFeature")], True),
      ("PackedFeatures", [("feature", 1, F.TYPE_MESSAGE, F.LABEL_REPEATED, "PackedFeatureEntry")], False),
      ("PackedExample", [("features", 1, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, "PackedFeatures")], False)]:
    message = proto.message_type.add(name=name)
    message.options.map_entry = is_map_entry
    for field_name, number, kind, label, type_name in fields:
      field = message.field.add(name=field_name, number=number, type=kind, label=label)
      if type_name:
        field.type_name = f".diffusion_jax.{type_name}"
  pool = descriptor_pool.DescriptorPool()
  pool.Add(proto)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("diffusion_jax.PackedExample"))


PackedExample = _packed_example_class()


def uint8_varints(values: np.ndarray) -> bytes:
  """uint8 values as the packed varints of an `int64_list`: v < 128 is the byte v, 128 <= v < 256 the bytes (v, 1)."""
  flat = np.asarray(values, np.uint8).reshape(-1)
  pairs = np.stack([flat, np.ones_like(flat)], axis=1)
  return pairs[np.stack([np.ones(flat.shape, bool), flat >= 128], axis=1)].tobytes()


def encode_varint(value: int) -> bytes:
  """The varint of one non-negative integer (little-endian groups of 7 bits, the high bit set on all but the last)."""
  out = bytearray()
  while True:
    out.append((value & 0x7F) | (0x80 if value >= 0x80 else 0))
    value >>= 7
    if not value:
      return bytes(out)


def encode_record(image: np.ndarray, label: int | None) -> bytes:
  """A serialized `tf.train.Example` {`image`: int64_list of the uint8 pixels, `label`: int64_list [label]}: what
  TFDS writes for a uint8 `Tensor` and a `ClassLabel`, built without TensorFlow."""
  example = PackedExample()
  example.features.feature["image"].int64_list.value = uint8_varints(image)
  if label is not None:
    example.features.feature["label"].int64_list.value = encode_varint(int(label))
  return example.SerializeToString(deterministic=True)


def stores_int64_tensors(source: Any) -> bool:
  """Whether `source` is array_record whose `image` is a fixed-shape uint8 tensor (and `label` an int64 scalar),
  which TFDS stores as `int64_list`s of `tf.train.Example` protos (encoded images, e.g. PNG, are `bytes`)."""
  if not isinstance(source, array_record.ArrayRecordDataSource):
    return False
  info = source.dataset_info.features.get_serialized_info()
  image, label = info.get("image"), info.get("label")
  static = image is not None and all(isinstance(d, int) for d in image.shape)
  return (static and image.np_dtype == np.uint8 and not image.sequence_rank
          and (label is None or (label.np_dtype == np.int64 and label.shape == ())))


def uint8_values(packed: bytes) -> np.ndarray:
  """Packed varints of values in [0, 256) -> uint8: a value >= 128 is the two bytes (value, 0x01), so each value
  is the first byte of its varint, and a byte is a first byte when the byte before it is < 128."""
  b = np.frombuffer(packed, np.uint8)
  first = np.empty(len(b), bool)
  first[:1] = True
  np.less(b[:-1], 0x80, out=first[1:])
  return np.compress(first, b)


def varint(packed: bytes) -> int:
  """The non-negative integer of one varint (little-endian groups of 7 bits)."""
  return sum((byte & 0x7F) << (7 * i) for i, byte in enumerate(packed))


def parse_int64_tensors(source: Any, shape: tuple[int, ...], keys: list[int]) -> dict[str, np.ndarray]:
  """Records `keys` of a `stores_int64_tensors` source (images of `shape`) as one batch, parsed straight from the
  protos' packed int64 lists, in one pass over the batch instead of TFDS's per-example decoding (speed:
  BENCHMARKS.md)."""
  features = [PackedExample.FromString(r).features.feature for r in source.data_source.__getitems__(keys)]
  x = uint8_values(b"".join([f["image"].int64_list.value for f in features]))
  if x.size != len(keys) * math.prod(shape):
    raise ValueError(f"{len(keys)} records of {source.dataset_info.name!r} (the first: {keys[0]}) hold {x.size} "
                     f"image values, not {len(keys)} x {shape}: not a packed list of uint8 values.")
  out = {"x": x.reshape(len(keys), *shape)}
  if "label" in features[0]:
    out["label"] = np.array([varint(f["label"].int64_list.value) for f in features], np.int32)
  return out


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The central square of an (H, W, C) uint8 image (its shorter side), resized to (size, size) bicubically.

  Images whose shorter side is already `size` (LSUN's are stored so) are only cropped.
  """
  H, W = image.shape[:2]
  side = min(H, W)
  top, left = (H - side) // 2, (W - side) // 2
  square = image[top:top + side, left:left + side]
  if side == size:
    return np.ascontiguousarray(square)
  resized = PIL.Image.fromarray(square.squeeze(-1) if square.shape[-1] == 1 else square).resize(
      (size, size), PIL.Image.BICUBIC)
  return np.asarray(resized, np.uint8).reshape(size, size, image.shape[-1])


def record(example: dict[str, Any], crop: int | None = None) -> dict[str, np.ndarray]:
  """A decoded example {`image`, `label`?} as a record {`x`: uint8 (H, W, C), cropped per `crop`; `label`: int32}."""
  image = np.asarray(example["image"], np.uint8)
  out = {"x": image if crop is None else center_crop(image, crop)}
  if "label" in example:
    out["label"] = np.asarray(example["label"], np.int32)
  return out


def decode_records(source: Any, crop: int | None, keys: list[int]) -> dict[str, np.ndarray]:
  """Records `keys` of `source` as one batch, each decoded by TFDS (and cropped per `crop`)."""
  records = [record(e, crop) for e in source.__getitems__(keys)]
  return {k: np.stack([r[k] for r in records]) for k in records[0]}


def batch_decoder(source: Any, crop: int | None) -> Callable[[list[int]], dict[str, np.ndarray]]:
  """`keys -> batch` for `source`, chosen once: parsed from the packed int64 lists where `stores_int64_tensors`
  holds (and nothing is cropped), else decoded record by record by TFDS (encoded images, e.g. PNG)."""
  if crop is None and stores_int64_tensors(source):
    shape = tuple(source.dataset_info.features.get_serialized_info()["image"].shape)
    return functools.partial(parse_int64_tensors, source, shape)
  return functools.partial(decode_records, source, crop)

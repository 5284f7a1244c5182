"""The FID network without its weights: the input pipeline pinned on known pixel values, and the shapes.

Neither torch nor the weights are needed: `preprocess` is checked against a float64 loop over TensorFlow 1's
`resize_bilinear` rule (align_corners=False: source = destination * in / out, the upper index clamped) and
against values worked out by hand; the network's output shape comes from `jax.eval_shape`."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.metrics import inception


def _tf1_resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
  """(H, W, C) -> (size, size, C), one output pixel at a time, in float64."""
  H, W, C = image.shape
  out = np.zeros((size, size, C))
  for i in range(size):
    sy = i * H / size
    y0 = math.floor(sy)
    y1, fy = min(y0 + 1, H - 1), sy - y0
    for j in range(size):
      sx = j * W / size
      x0 = math.floor(sx)
      x1, fx = min(x0 + 1, W - 1), sx - x0
      top = (1 - fx) * image[y0, x0] + fx * image[y0, x1]
      bottom = (1 - fx) * image[y1, x0] + fx * image[y1, x1]
      out[i, j] = (1 - fy) * top + fy * bottom
  return out


def test_known_pixels_of_a_two_by_two_grey_image():
  image = np.array([[0, 255], [128, 64]], np.uint8)[None, :, :, None]
  x = np.asarray(jax.jit(inception.preprocess)(jnp.asarray(image)))[0]
  assert x.shape == (299, 299, 3)
  np.testing.assert_array_equal(x[..., 0], x[..., 1])  # grey repeated over the channels
  np.testing.assert_array_equal(x[..., 0], x[..., 2])
  assert x[0, 0, 0] == -1.0  # 0 / 128 - 1
  assert x[0, 298, 0] == 127 / 128  # source column 1.993 -> clamped to column 1: 255 / 128 - 1
  assert x[298, 0, 0] == 0.0  # 128 / 128 - 1
  assert x[298, 298, 0] == -0.5  # 64 / 128 - 1
  s = 100 * 2 / 299  # output column 100 reads source column 0.669: 255 * 0.669 of the way from 0
  np.testing.assert_allclose(x[0, 100, 0], 255 * s / 128 - 1, rtol=0, atol=2e-6)


@pytest.mark.parametrize("shape", [(8, 8, 3), (28, 28, 1), (13, 40, 3)])
def test_preprocess_is_tf1_resize_bilinear_then_scaled(shape):
  image = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
  got = np.asarray(jax.jit(inception.preprocess)(jnp.asarray(image[None])))[0]
  want = _tf1_resize_bilinear(image.astype(np.float64), 299) / 128 - 1
  want = np.clip(np.repeat(want, 3, -1) if shape[-1] == 1 else want, -1, 127 / 128)
  np.testing.assert_allclose(got, want, rtol=0, atol=3e-6)


def test_images_already_299_pass_through_the_scaling_only():
  image = np.random.default_rng(1).integers(0, 256, size=(1, 299, 299, 3), dtype=np.uint8)
  got = np.asarray(inception.preprocess(jnp.asarray(image)))
  np.testing.assert_array_equal(got, np.clip(image / 128.0 - 1.0, -1, 127 / 128).astype(np.float32))


def test_the_network_gives_2048_features_per_image():
  params = jax.eval_shape(lambda: inception.InceptionV3().init(jax.random.key(0), jnp.zeros((1, 299, 299, 3))))
  out = jax.eval_shape(inception.features, params["params"], jax.ShapeDtypeStruct((5, 32, 32, 3), jnp.uint8))
  assert out.shape == (5, inception.FEATURE_DIM) and out.dtype == jnp.float32


@pytest.mark.parametrize("images", [np.zeros((2, 8, 8, 3), np.float32), np.zeros((2, 8, 8, 2), np.uint8),
                                    np.zeros((8, 8, 3), np.uint8)])
def test_preprocess_rejects_what_it_cannot_read(images):
  with pytest.raises(ValueError, match="uint8 of shape"):
    inception.preprocess(jnp.asarray(images))

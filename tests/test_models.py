"""The DDPM UNet and the toy MLP: exact parameter counts, embedding, dropout, dtypes, remat, validation."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from diffusion_jax.models.layers import GroupNorm, dropout, group_norm, timestep_embedding
from diffusion_jax.models.mlp import MLPDenoiser
from diffusion_jax.models.unet import UNet

TOY = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.1)


def _num_params(model, image_shape):
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), jnp.zeros((1,), jnp.int32)))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


def test_cifar10_unet_has_the_papers_35_7m_parameters():
  model = UNet(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,))
  assert _num_params(model, (32, 32, 3)) == 35_746_307


def test_256_unet_has_the_papers_114m_parameters():
  model = UNet(ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,))
  assert _num_params(model, (256, 256, 3)) == 113_673_219


def test_learned_variance_and_class_conditioning_add_exactly_their_parameters():
  base = _num_params(UNet(**TOY), (16, 16, 3))
  # conv_out: 3x3 kernel from ch channels, 3 more outputs (+3 biases).
  assert _num_params(UNet(**TOY, out_channels=6), (16, 16, 3)) == base + 3 * (9 * 32 + 1)
  assert _num_params(UNet(**TOY, num_classes=10), (16, 16, 3)) == base + 11 * 4 * 32


@pytest.mark.parametrize("dim", [4, 31, 128])
def test_timestep_embedding_matches_float64(dim):
  t = np.array([0, 1, 17, 500, 999])
  got = jax.jit(timestep_embedding, static_argnums=1)(jnp.asarray(t), dim)
  # Arguments up to ~1000 rad in float32: absolute error ~ 1000 * 6e-8.
  np.testing.assert_allclose(got, ref.timestep_embedding(t, dim), atol=1e-4, rtol=0)
  assert got.shape == (5, dim) and got.dtype == jnp.float32


@pytest.mark.slow
@pytest.mark.parametrize("swish", [False, True])
@pytest.mark.parametrize("shape, groups", [((4, 8, 8, 64), 32), ((2, 5, 5, 12), 4), ((3, 16), 4)])
def test_group_norm_equals_flax_group_norm(shape, groups, swish):
  """Values, and the hand-written VJP against autodiff of flax's GroupNorm (+ swish), for x and parameters."""
  x = 3.0 * jax.random.normal(jax.random.key(0), shape) + 1.5
  ref = nn.GroupNorm(groups, epsilon=1e-6)
  variables = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(1), a.shape),
                           ref.init(jax.random.key(2), x))
  ours = GroupNorm(groups, swish=swish)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(2), x)) == jax.tree.map(jnp.shape, variables)
  ref_fn = lambda v, x: nn.swish(ref.apply(v, x)) if swish else ref.apply(v, x)
  np.testing.assert_allclose(ours.apply(variables, x), ref_fn(variables, x), rtol=1e-5, atol=2e-6)
  loss = lambda f: jax.jit(jax.grad(lambda v, x: jnp.sum(jnp.sin(3.0 * f(v, x))), argnums=(0, 1)))
  for a, b in zip(jax.tree.leaves(loss(ours.apply)(variables, x)), jax.tree.leaves(loss(ref_fn)(variables, x))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("x_shape, groups, param_shape, match", [
    ((2, 4, 4, 12), 8, (12,), "12 channels are not divisible by num_groups = 8"),
    ((2, 4, 4, 12), 4, (6,), r"scale and bias must have shape \(12,\)"),
    ((12,), 4, (12,), r"shape \(batch, ..., channels\)"),
])
def test_group_norm_rejects_bad_shapes_before_tracing(x_shape, groups, param_shape, match):
  with pytest.raises(ValueError, match=match):
    group_norm(jnp.zeros(x_shape), jnp.ones(param_shape), jnp.zeros(param_shape), groups, 1e-6, False, jnp.float32)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_keeps_each_element_independently_with_probability_1_minus_rate(rate):
  """Kept fraction, E[output] = x, and the two elements sharing a 32-bit word, against binomial tolerances."""
  shape = (8, 32, 32, 96)
  n = math.prod(shape)
  x = jnp.asarray(np.random.default_rng(0).uniform(1.0, 2.0, shape), jnp.float32)
  out = np.asarray(jax.jit(dropout, static_argnums=1)(x, rate, jax.random.key(0)))
  kept = out != 0
  p_drop = round(rate * 2**16) / 2**16
  np.testing.assert_array_equal(out[kept], np.asarray(x)[kept] * np.float32(1 / (1 - p_drop)))
  sigma = math.sqrt(p_drop * (1 - p_drop) / n)
  assert abs(kept.mean() - (1 - p_drop)) < 5 * sigma
  ratio = out / np.asarray(x)  # mask / (1 - p): mean 1, std sqrt(p / (1 - p))
  assert abs(ratio.mean() - 1.0) < 5 * math.sqrt(p_drop / (1 - p_drop) / n)
  pairs = kept.reshape(-1, 2).astype(np.float64)  # elements 2i, 2i+1 come from one 32-bit word
  corr = np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]
  assert abs(corr) < 5 / math.sqrt(n / 2)
  assert abs(np.corrcoef(kept[0].ravel(), kept[1].ravel())[0, 1]) < 5 / math.sqrt(n / 8)  # across examples


def test_dropout_shapes_keys_and_rates():
  x = jnp.ones((5, 7))  # odd channel count: the last word's second half is unused
  a, b = dropout(x, 0.3, jax.random.key(1)), dropout(x, 0.3, jax.random.key(2))
  assert a.shape == (5, 7) and a.dtype == x.dtype
  np.testing.assert_array_equal(a, dropout(x, 0.3, jax.random.key(1)))
  assert not np.array_equal(a, b)
  np.testing.assert_array_equal(dropout(x, 0.0, jax.random.key(1)), x)
  assert dropout(x.astype(jnp.bfloat16), 0.3, jax.random.key(1)).dtype == jnp.bfloat16
  for bad in (-0.1, 1.0):
    with pytest.raises(ValueError, match=rf"dropout rate must be in \[0, 1\), got {bad}"):
      dropout(x, bad, jax.random.key(1))


def _random_variables(model, seed, *args):
  """Random parameters of `model.init`'s shapes, away from the near-zero output init, without compiling init.

  Kernels and biases ~ N(0, 0.05^2), GroupNorm scales 1 + N(0, 0.05^2): every layer shapes the output.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), *args)
  paths, tree = jax.tree_util.tree_flatten_with_path(shapes)
  rng = np.random.default_rng(seed)
  leaves = [jnp.asarray((jax.tree_util.keystr(p).endswith("['scale']") * 1.0) + 0.05 * rng.normal(size=s.shape),
                        jnp.float32) for p, s in paths]
  return jax.tree.unflatten(tree, leaves)


@pytest.fixture(scope="module")
def toy():
  model = UNet(**TOY)
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  t = jnp.array([0, 10, 500, 999])
  return model, _random_variables(model, 2, x, t), x, t


APPLY = jax.jit(UNet(**TOY).apply, static_argnames="train")


@pytest.mark.slow
def test_output_shape_and_init(toy):
  model, _, x, t = toy
  variables = jax.jit(model.init)(jax.random.key(0), x, t)
  out = APPLY(variables, x, t)
  assert out.shape == x.shape and out.dtype == jnp.float32
  # Output conv at variance scale 1e-10 (the paper's "zero" init): weights below sqrt(3e-10 / fan_avg).
  assert float(jnp.abs(out).max()) < 1e-3
  p = variables["params"]
  assert float(jnp.abs(p["conv_out"]["kernel"]).max()) < 1e-5
  assert float(jnp.abs(p["down_0_block_0"]["conv2"]["kernel"]).max()) < 1e-5
  k = np.asarray(p["down_1_block_0"]["conv1"]["kernel"])  # 3x3, 32 -> 64
  limit = math.sqrt(3.0 / ((9 * 32 + 9 * 64) / 2))  # uniform variance scaling, fan_avg, scale 1
  assert np.abs(k).max() <= limit and abs(k.std() - limit / math.sqrt(3)) < 0.02 * limit
  wide = UNet(**TOY, out_channels=6)
  assert jax.eval_shape(lambda: wide.apply(wide.init(jax.random.key(0), x, t), x, t)).shape == (4, 16, 16, 6)


@pytest.mark.slow
def test_dropout_only_in_training_and_deterministic_given_key(toy):
  _, variables, x, t = toy
  run = lambda seed: APPLY(variables, x, t, train=True, rngs={"dropout": jax.random.key(seed)})
  eval_out = APPLY(variables, x, t)  # eval mode takes no dropout rng at all
  np.testing.assert_array_equal(run(3), run(3))
  assert not np.allclose(run(3), run(4))
  assert not np.allclose(run(3), eval_out)


def test_bfloat16_compute_close_to_float32(toy):
  """bf16 has an 8-bit mantissa (relative rounding 2^-9); over ~20 layers we allow 5% relative RMS error."""
  model, variables, x, t = toy
  out32 = APPLY(variables, x, t)
  bf16 = UNet(**TOY, dtype=jnp.bfloat16)
  bf16_shapes = jax.eval_shape(bf16.init, jax.random.key(0), x, t)
  assert jax.tree.map(lambda p: p.dtype, bf16_shapes) == jax.tree.map(lambda p: p.dtype, variables)
  out16 = jax.jit(bf16.apply)(variables, x, t)
  assert out16.dtype == jnp.float32
  rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
  assert 0 < rel < 0.05, rel


@pytest.mark.slow
def test_remat_gives_the_same_gradients(toy):
  model, variables, x, t = toy
  loss = lambda m: lambda v: jnp.sum(m.apply(v, x, t, train=True, rngs={"dropout": jax.random.key(5)}) ** 2)
  g = jax.jit(jax.grad(loss(model)))(variables)
  g_remat = jax.jit(jax.grad(loss(model.clone(remat=True))))(variables)
  # Same math, reordered float32 sums; some leaves (biases feeding a GroupNorm) have true gradient 0,
  # so the tolerance is relative to the largest gradient anywhere.
  scale = max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g))
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * scale)


@pytest.mark.slow
def test_class_conditioning_and_null_label(toy):
  _, _, x, t = toy
  model = UNet(**TOY, num_classes=10)
  variables = _random_variables(model, 3, x, t, jnp.zeros((4,), jnp.int32))
  apply = jax.jit(model.apply)
  out = apply(variables, x, t, jnp.array([0, 3, 3, 9]))
  assert not np.allclose(out, apply(variables, x, t, jnp.array([1, 3, 3, 9])))
  np.testing.assert_allclose(apply(variables, x, t, None), apply(variables, x, t, jnp.full((4,), 10)),
                             rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="unconditional"):
    UNet(**TOY).apply(toy[1], x, t, jnp.zeros((4,), jnp.int32))


@pytest.mark.parametrize("kwargs, shape, match", [
    (dict(ch_mult=(1, 2, 2, 2)), (20, 20, 3), r"image size 20x20 is not divisible by 2\^\(levels - 1\) = 8"),
    (dict(ch=48), (16, 16, 3), r"48 channels, not divisible by model.num_groups = 32"),
    (dict(attn_resolutions=(5,)), (16, 16, 3), r"attn_resolutions .* includes \[5\]"),
    (dict(dropout=1.0), (16, 16, 3), r"model.dropout = 1.0"),
    (dict(num_res_blocks=0), (16, 16, 3), r"model.num_res_blocks = 0"),
    (dict(ch_mult=()), (16, 16, 3), r"model.ch_mult"),
])
def test_bad_configurations_raise(kwargs, shape, match):
  model = UNet(**{**TOY, **kwargs})
  with pytest.raises(ValueError, match=match):
    model.check(shape)
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)), jnp.zeros((1,), jnp.int32)))


def test_mlp_denoiser():
  model = MLPDenoiser(hidden=32, num_layers=2)
  x, t = jnp.ones((5, 2)), jnp.arange(5)
  variables = model.init(jax.random.key(0), x, t)
  out = model.apply(variables, x, t)
  assert out.shape == (5, 2) and np.all(np.isfinite(out))
  wide = MLPDenoiser(hidden=32, out_dim=4)
  assert wide.apply(wide.init(jax.random.key(0), x, t), x, t).shape == (5, 4)
  # The output depends on t through the embedding.
  assert not np.allclose(out, model.apply(variables, x, t + 100))
  with pytest.raises(ValueError, match="shape"):
    model.apply(variables, x, t[:2])


def test_mlp_denoiser_equals_a_numpy_forward_pass():
  """Random (not initial) parameters, so that every branch counts; float64 NumPy reference of the residual MLP:
  temb = D0(swish(D1(emb(t)))); h = D2(x); h += D_out(swish(D_in(swish(h + temb)))) per layer; out = D7(swish(h))."""
  model = MLPDenoiser(hidden=16, num_layers=2)
  x = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
  t = np.array([0, 3, 17, 400, 999])
  shapes = model.init(jax.random.key(0), jnp.asarray(x), jnp.asarray(t))["params"]
  leaves, tree = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [0.5 * jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)])
  p = {name: (np.asarray(v["kernel"], np.float64), np.asarray(v["bias"], np.float64)) for name, v in params.items()}
  dense = lambda name, h: h @ p[name][0] + p[name][1]
  swish = lambda h: h / (1 + np.exp(-h))
  freqs = np.exp(-np.log(10000.0) / 7 * np.arange(8))
  emb = np.concatenate([np.sin(t[:, None] * freqs), np.cos(t[:, None] * freqs)], 1)
  temb = dense("Dense_0", swish(dense("Dense_1", emb)))
  h = dense("Dense_2", x.astype(np.float64))
  for outer, inner in [("Dense_3", "Dense_4"), ("Dense_5", "Dense_6")]:
    h = h + dense(outer, swish(dense(inner, swish(h + temb))))
  want = dense("Dense_7", swish(h))
  got = jax.jit(model.apply)({"params": params}, jnp.asarray(x), jnp.asarray(t))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

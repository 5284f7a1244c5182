"""The per-backend XLA options: same results as XLA's defaults, the option takes effect, safe fallbacks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.models.unet import UNet
from diffusion_jax.run import compiler

pytestmark = [pytest.mark.cpu_only, pytest.mark.skipif(compiler.compiler_options() is None,
                                                       reason="no library options for this jaxlib")]


def _conv_and_reductions(x, w):
  y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y, y.sum((0, 1, 2)), jnp.square(y).mean((1, 2))


def test_options_change_the_kernels_not_the_results():
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 64))
  w = 0.05 * jax.random.normal(jax.random.key(1), (3, 3, 64, 64))
  ours = compiler.jit(_conv_and_reductions)
  defaults = jax.jit(_conv_and_reductions)
  hlo = ours.lower(x, w).compile().as_text()
  # The convolution is XLA's own kernel, not inside a YNNPACK fusion; reductions may be.
  conv_lines = [line for line in hlo.splitlines() if " convolution(" in line]
  assert conv_lines and not any("ynn" in line for line in conv_lines)
  for a, b in zip(ours(x, w), defaults(x, w)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(b))))


@pytest.mark.slow
def test_unet_gradients_agree_with_xla_defaults():
  model = UNet(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  t = jnp.array([3, 700])
  params = jax.jit(model.init)(jax.random.key(1), x, t)
  loss = lambda p: jnp.mean(jnp.square(model.apply(p, x, t) - x))
  ours = compiler.jit(jax.value_and_grad(loss))(params)
  defaults = jax.jit(jax.value_and_grad(loss))(params)
  np.testing.assert_allclose(ours[0], defaults[0], rtol=1e-5)
  largest = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(defaults[1]))
  for a, b in zip(jax.tree.leaves(ours[1]), jax.tree.leaves(defaults[1])):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * largest)


def test_xla_flags_setting_the_option_wins(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
  assert compiler.compiler_options() is None


@pytest.mark.parametrize("options", [{compiler.YNN_FUSION_TYPE: "NOT_A_FUSION_TYPE"}, {"xla_cpu_no_such_option": "1"}])
def test_a_jaxlib_that_refuses_the_option_gets_xla_defaults(monkeypatch, options):
  assert not compiler.options_accepted(options)
  monkeypatch.setattr(compiler, "CPU_OPTIONS", options)
  monkeypatch.setattr(compiler, "AMX_CPU_OPTIONS", options)
  assert compiler.compiler_options() is None


@pytest.mark.parametrize("amx", [True, False])
def test_matmuls_go_to_ynnpack_on_a_cpu_with_amx_only(monkeypatch, amx):
  """With AMX a bfloat16 dot (float32 result) compiles into a YNNPACK fusion, without into XLA's own dot; both
  give the float32 product of the bfloat16 inputs."""
  monkeypatch.setattr(compiler, "has_amx", lambda: amx)
  a = jax.random.normal(jax.random.key(0), (64, 96)).astype(jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (96, 32)).astype(jnp.bfloat16)
  dot = compiler.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  hlo = dot.lower(a, b).compile().as_text()
  assert ("__ynn_fusion" in hlo) == amx
  want = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
  np.testing.assert_allclose(dot(a, b), want, rtol=1e-5, atol=1e-4)


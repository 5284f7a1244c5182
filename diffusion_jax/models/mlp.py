"""A small residual MLP noise predictor for low-dimensional toy data (e.g. 2-D)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.layers import default_init, timestep_embedding


class MLPDenoiser(nn.Module):
  """eps_theta(x_t, t) for x of shape `(batch, dim)`: residual swish MLP with the DDPM timestep embedding.

  Attributes:
    hidden: width of every hidden layer (and of the timestep embedding).
    num_layers: residual blocks.
    out_dim: output features; None for the input's (twice that for learned variance).
  """

  hidden: int = 128
  num_layers: int = 3
  out_dim: int | None = None

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, *, train: bool = False) -> jax.Array:
    """Network output at (x_t, t).

    Args:
      x: points, shape `(batch, dim)`.
      t: int timesteps in `[0, T)`, shape `(batch,)`.
      train: unused (no dropout); accepted for the common model signature.

    Returns:
      float32 array of shape `(batch, out_dim or dim)`.
    """
    del train
    if x.ndim != 2 or t.shape != x.shape[:1]:
      raise ValueError(f"MLPDenoiser needs x of shape (batch, dim) and t of shape (batch,), got {x.shape}, {t.shape}.")
    if self.hidden < 4 or self.num_layers < 1:
      raise ValueError(f"model.hidden must be >= 4 and model.num_layers >= 1, got {self.hidden}, {self.num_layers}.")
    dense = lambda n, scale=1.0: nn.Dense(n, kernel_init=default_init(scale))
    temb = dense(self.hidden)(nn.swish(dense(self.hidden)(timestep_embedding(t, self.hidden))))
    h = dense(self.hidden)(x.astype(jnp.float32))
    for _ in range(self.num_layers):
      h = h + dense(self.hidden, 0.0)(nn.swish(dense(self.hidden)(nn.swish(h + temb))))
    return dense(self.out_dim or x.shape[-1])(nn.swish(h))

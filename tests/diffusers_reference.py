"""diffusers' own UNet2DModel and DDPMScheduler as the reference for diffusion_jax.pretrained, and the fixtures.

    python tests/diffusers_reference.py   # rewrites tests/fixtures/ddpm-tiny and the name list; needs torch + diffusers

The tests call these functions directly where torch and diffusers are installed
(the `reference` extra). The committed fixtures let the rest of the suite run without them:
- `fixtures/ddpm-tiny/`: a UNet2DModel of configs/tiny.py's layout (8x8x1 digits, 44k
  parameters) with random weights (every bias and norm parameter moved off its 0/1 init),
  written as the 2022 google/ddpm-* uploads are: `diffusion_pytorch_model.bin` (torch.save)
  with the old attention names (query/key/value/proj_attn), config.json, and the
  scheduler_config.json of tiny's schedule. `reference.npz` holds inputs, timesteps and
  diffusers' outputs for them.
- `fixtures/ddpm-cifar10-32/state_dict.json`: the tensor names and shapes of
  google/ddpm-cifar10-32, the UNet2DModel of its published config.json
  (`fixtures/ddpm-cifar10-32/config.json`) in the upload's old attention names.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
LEGACY_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def published_config(name: str, file: str = "config.json") -> dict[str, Any]:
  """A published config.json (`ddpm-cifar10-32`, `ddpm-cat-256`) as committed under fixtures/."""
  with open(os.path.join(FIXTURES, name, file)) as f:
    return json.load(f)


def tiny_unet_config() -> dict[str, Any]:
  """UNet2DModel config.json of configs/tiny.py's UNet on 8x8x1 digits, in the published files' conventions."""
  cfg = published_config("ddpm-cifar10-32")
  cfg.update(block_out_channels=[8, 16], down_block_types=["DownBlock2D", "AttnDownBlock2D"],
             up_block_types=["AttnUpBlock2D", "UpBlock2D"], layers_per_block=1, norm_num_groups=4, sample_size=8,
             in_channels=1, out_channels=1)
  return cfg


def tiny_scheduler_config() -> dict[str, Any]:
  """DDPMScheduler config of configs/tiny.py's schedule: T = 50, linear from 1e-4 * 20 to 0.02 * 20."""
  return {"_class_name": "DDPMScheduler", "num_train_timesteps": 50, "beta_schedule": "linear",
          "beta_start": 0.002, "beta_end": 0.4, "variance_type": "fixed_large", "clip_sample": True,
          "prediction_type": "epsilon", "trained_betas": None}


def random_unet(cfg: dict[str, Any], seed: int = 0) -> Any:
  """diffusers' UNet2DModel of `cfg`, eval mode, its default init with every 1-D parameter moved by N(0, 0.2^2)."""
  import diffusers
  import torch
  torch.manual_seed(seed)
  model = diffusers.UNet2DModel(**{k: v for k, v in cfg.items() if not k.startswith("_")}).eval()
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim == 1:
        p.add_(0.2 * torch.randn(p.shape))
  return model


def state_dict(model: Any, legacy: bool = False) -> dict[str, np.ndarray]:
  """The model's tensors as NumPy; `legacy`: attention layers under their 2022 names."""
  out = {}
  for name, tensor in model.state_dict().items():
    if legacy and ".attentions." in name:
      for new, old in LEGACY_ATTENTION.items():
        name = name.replace(f".{new}.", f".{old}.")
    out[name] = tensor.detach().numpy()
  return out


def inputs(image_shape: tuple[int, ...], batch: int, num_timesteps: int, seed: int = 0
           ) -> tuple[np.ndarray, np.ndarray]:
  """N(0, 1) images (batch, H, W, C) float32 and timesteps spread over [0, T), from a fixed seed."""
  rng = np.random.RandomState(seed)
  x = rng.randn(batch, *image_shape).astype(np.float32)
  t = np.linspace(0, num_timesteps - 1, batch).round().astype(np.int64)
  return x, t


def forward(model: Any, x: np.ndarray, t: np.ndarray) -> np.ndarray:
  """diffusers' output for NHWC `x` at timesteps `t`, as NHWC float32."""
  import torch
  with torch.no_grad():
    out = model(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t)).sample
  return out.numpy().transpose(0, 2, 3, 1)


def write_tiny_fixture(directory: str) -> None:
  """`fixtures/ddpm-tiny`: see the module docstring."""
  import torch
  cfg = tiny_unet_config()
  model = random_unet(cfg)
  os.makedirs(directory, exist_ok=True)
  torch.save({k: torch.from_numpy(v) for k, v in state_dict(model, legacy=True).items()},
             os.path.join(directory, "diffusion_pytorch_model.bin"))
  for name, content in [("config.json", cfg), ("scheduler_config.json", tiny_scheduler_config())]:
    with open(os.path.join(directory, name), "w") as f:
      json.dump(content, f, indent=2)
  x, t = inputs((8, 8, 1), 4, 50)
  np.savez(os.path.join(directory, "reference.npz"), x=x, t=t, out=forward(model, x, t))


def write_name_list(path: str) -> None:
  """`fixtures/ddpm-cifar10-32/state_dict.json`: [[name, shape], ...] of the published checkpoint."""
  import diffusers
  cfg = published_config("ddpm-cifar10-32")
  model = diffusers.UNet2DModel(**{k: v for k, v in cfg.items() if not k.startswith("_")})
  names = [[name, list(array.shape)] for name, array in state_dict(model, legacy=True).items()]
  with open(path, "w") as f:
    f.write("[\n" + ",\n".join(json.dumps(entry) for entry in names) + "\n]\n")


if __name__ == "__main__":
  write_tiny_fixture(os.path.join(FIXTURES, "ddpm-tiny"))
  write_name_list(os.path.join(FIXTURES, "ddpm-cifar10-32", "state_dict.json"))
  print("wrote", FIXTURES)

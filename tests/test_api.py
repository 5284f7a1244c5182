"""The public math API keeps one convention (README, "The library"): the schedule (or betas, or solver table) is the
only positional argument, the variance defaults to `fixed_large`, every name README mentions is exported, and
timestep lists go in sampling order."""

import inspect
import re

import numpy as np
import pytest

import diffusion_jax
import helpers

EXPORTED = {name: getattr(diffusion_jax, name) for name in diffusion_jax.__all__}
FUNCTIONS = {name: fn for name, fn in EXPORTED.items() if inspect.isfunction(fn)}
FIRST = ("schedule", "betas", "table")


@pytest.mark.parametrize("name", sorted(n for n, f in FUNCTIONS.items()
                                        if next(iter(inspect.signature(f).parameters)) in FIRST))
def test_a_function_of_a_schedule_takes_everything_else_by_keyword(name):
  params = list(inspect.signature(FUNCTIONS[name]).parameters.values())
  assert params[0].kind == inspect.Parameter.POSITIONAL_OR_KEYWORD
  assert all(p.kind == inspect.Parameter.KEYWORD_ONLY for p in params[1:]), name


def test_the_variance_defaults_to_fixed_large_everywhere():
  defaults = {name: inspect.signature(fn).parameters["model_var_type"].default for name, fn in FUNCTIONS.items()
              if "model_var_type" in inspect.signature(fn).parameters}
  assert {"ancestral_sample", "p_mean_variance", "training_losses", "variational_bound"} <= set(defaults)
  assert set(defaults.values()) == {"fixed_large"}


def test_every_name_readme_gives_for_the_math_is_exported():
  table = helpers.README[helpers.README.index("The math, `diffusion_jax.*`"):helpers.README.index("The runtime,")]
  named = {n for n in re.findall(r"`([A-Za-z_]\w*)`", table) if n[0].islower() or n[0].isupper()}
  modules = {"schedules", "diffusion", "losses", "importance", "sampling", "guidance", "solvers", "karras", "editing",
             "models", "metrics", "pretrained", "checks", "files", "stats", "inception", "inception_weights", "tensors",
             "names", "configs", "unet", "mlp", "layers"}
  values = {"linear", "cosine", "quadratic", "sigmoid", "constant", "custom", "linspace", "leading", "trailing",
            "logsnr", "karras", "rescale", "interval", "eps", "xstart", "v", "fixed_large", "fixed_small",
            "learned_range", "load", "save", "MLPDenoiser", "UNet", "frechet_distance", "kid", "energy_distance",
            "UNet2DModel", "DDPMScheduler"}
  assert named - modules - values <= set(diffusion_jax.__all__), named - modules - values - set(diffusion_jax.__all__)


def test_timestep_lists_are_in_sampling_order_in_and_out():
  betas = diffusion_jax.get_beta_schedule("linear", num_diffusion_steps=100)
  for spacing in ("linspace", "leading", "trailing", "logsnr", "quadratic"):
    ts = diffusion_jax.sampling_timesteps(betas, num_steps=10, spacing=spacing)
    assert (np.diff(ts) < 0).all(), spacing
    diffusion_jax.respace(betas, timesteps=ts)  # taken as given
    diffusion_jax.solver_table(betas, timesteps=ts)
    with pytest.raises(ValueError, match="sampling order"):
      diffusion_jax.respace(betas, timesteps=ts[::-1])
    with pytest.raises(ValueError, match="sampling order"):
      diffusion_jax.solver_table(betas, timesteps=ts[::-1])

"""diffusion_jax: Denoising Diffusion Probabilistic Models (Ho et al. 2020) in JAX/Flax.

The math, importable on its own (it loads nothing of the runtime in `diffusion_jax.run`):

- one convention: functions of a schedule (or of float64 betas, or of a solver table) take it as their only
  positional argument and everything else by keyword;
- timesteps are integer indices `t` in `[0, T)`, `t = 0` being the paper's `t = 1`, and every list of
  timesteps is in sampling order (strictly decreasing, the first step first);
- the reverse-process variance defaults to `fixed_large` (sigma_t^2 = beta_t) everywhere, as in the configs.
"""

from diffusion_jax.diffusion import (
    ModelFn,
    PMeanVariance,
    eps_from_score,
    p_mean_variance,
    predict_eps_from_xstart,
    predict_xstart,
    predict_xstart_from_eps,
    predict_xstart_from_v,
    q_mean_variance,
    q_posterior_mean_variance,
    q_sample,
    q_step,
    score_from_eps,
    v_target,
)
from diffusion_jax.editing import ddim_invert, repaint_sample, repaint_timesteps, sdedit_start, sdedit_timesteps
from diffusion_jax.guidance import LabelledModelFn, classifier_free_guidance, rescale_guidance
from diffusion_jax.karras import KarrasTable, karras_sample, karras_table, sigma_timestep
from diffusion_jax.losses import (
    VariationalBound,
    discretized_gaussian_log_likelihood,
    loss_weights,
    mse_loss,
    normal_kl,
    training_losses,
    variational_bound,
)
from diffusion_jax.sampling import Inpainting, Trajectory, ancestral_sample, ddim_sample
from diffusion_jax.schedules import (
    DiffusionSchedule,
    get_beta_schedule,
    make_schedule,
    rescale_zero_terminal_snr,
    respace,
    sampling_timesteps,
)
from diffusion_jax.solvers import SolverTable, solver_sample, solver_table

__all__ = [
    "DiffusionSchedule", "Inpainting", "KarrasTable", "LabelledModelFn", "ModelFn", "PMeanVariance", "SolverTable",
    "Trajectory", "VariationalBound", "ancestral_sample", "classifier_free_guidance", "ddim_invert", "ddim_sample",
    "discretized_gaussian_log_likelihood", "eps_from_score", "get_beta_schedule", "karras_sample", "karras_table",
    "loss_weights", "make_schedule", "mse_loss", "normal_kl", "p_mean_variance", "predict_eps_from_xstart",
    "predict_xstart", "predict_xstart_from_eps", "predict_xstart_from_v", "q_mean_variance",
    "q_posterior_mean_variance", "q_sample", "q_step", "repaint_sample", "repaint_timesteps", "rescale_guidance",
    "rescale_zero_terminal_snr", "respace", "sampling_timesteps", "score_from_eps", "sdedit_start", "sdedit_timesteps",
    "sigma_timestep", "solver_sample", "solver_table", "training_losses", "v_target", "variational_bound",
]
__version__ = "0.1.0"

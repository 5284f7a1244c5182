"""diffusion_jax: Denoising Diffusion Probabilistic Models (Ho et al. 2020) in JAX/Flax."""

from diffusion_jax.diffusion import (
    p_mean_variance,
    predict_eps_from_xstart,
    predict_v,
    predict_xstart,
    predict_xstart_from_eps,
    predict_xstart_from_v,
    q_mean_variance,
    q_posterior_mean_variance,
    q_sample,
    q_step,
    score_from_eps,
)
from diffusion_jax.losses import (
    discretized_gaussian_log_likelihood,
    normal_kl,
    training_losses,
    variational_bound,
)
from diffusion_jax.sampling import ddim_sample, sample, solver_sample, solver_table
from diffusion_jax.schedules import (
    DiffusionSchedule,
    get_beta_schedule,
    make_schedule,
    respace,
    sampling_timesteps,
    space_timesteps,
)

__all__ = [
    "DiffusionSchedule", "ddim_sample", "discretized_gaussian_log_likelihood", "get_beta_schedule",
    "make_schedule", "normal_kl", "p_mean_variance", "predict_eps_from_xstart", "predict_v", "predict_xstart",
    "predict_xstart_from_eps", "predict_xstart_from_v", "q_mean_variance", "q_posterior_mean_variance",
    "q_sample", "q_step", "respace", "sample", "sampling_timesteps", "score_from_eps", "solver_sample",
    "solver_table", "space_timesteps", "training_losses", "variational_bound",
]
__version__ = "0.1.0"

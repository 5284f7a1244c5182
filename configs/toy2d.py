"""The quick demonstration: a swiss roll (or two_moons) with the MLP denoiser, under a minute on a CPU.

    python main.py --config configs/toy2d.py --workdir workdirs/toy2d
    python main.py --config configs/toy2d.py --workdir workdirs/moons --config.data.dataset=two_moons

Writes workdirs/toy2d/samples/step_00008000.png: 2000 samples (red) over held-out data (grey), titled
with the energy distance of those samples to 2000 held-out points and its ratio to real data's (the mean
over ten disjoint draws of 2000 training points against the same held-out points; the log's last line
says the same). Under a minute on 2 CPU cores; an energy-distance ratio near 1 (one draw of 2000 samples
spreads over about 0.4x-2x: BENCHMARKS.md, "The 2-D toys").
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.dataset = "swiss_roll"
  c.model.name = "mlp"
  c.model.hidden = 128
  c.model.num_layers = 3
  c.diffusion.num_diffusion_steps = 1000
  c.diffusion.beta_schedule = "cosine"
  c.training.num_train_steps = 8000
  c.training.global_batch_size = 512
  c.training.learning_rate = 2e-3
  c.training.warmup_steps = 100
  c.training.ema_decay = 0.995
  c.training.log_every_steps = 1000
  c.training.checkpoint_every_steps = 2000
  c.training.sample_every_steps = 8000
  c.sampling.clip_denoised = False
  c.sampling.num_samples = 2000
  c.sampling.batch_size = 2000
  c.sampling.preview_samples = 2000
  # The energy distance of the final 2000 samples to held-out points, beside real data's (training points).
  c.eval.quality_samples = 2000
  c.eval.quality_every_steps = 8000
  return c

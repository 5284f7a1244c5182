"""diffusers-format checkpoints: the file readers against their own libraries, the layout against diffusers'
UNet2DModel (outputs to 1e-5), the published checkpoints' names, and main.py sampling, evaluating and
exporting through them."""

import datetime
import importlib
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusers_reference as ref
import helpers
from diffusion_jax import pretrained, schedules
from diffusion_jax.models.unet import UNet
from diffusion_jax.pretrained import names
from diffusion_jax.run import data, experiment, modes, sampler, train, transfer
from helpers import tiny_config

TINY = os.path.join(ref.FIXTURES, "ddpm-tiny")
PAPER_CIFAR10_PARAMETERS = 35_746_307  # Ho et al.'s CIFAR-10 UNet


def _apply(model: UNet, params, x: np.ndarray, t: np.ndarray) -> np.ndarray:
  return np.asarray(jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))(params, x, t))


# ------------------------------------------------------------------------------------------------ files


def test_safetensors_reader_and_writer_agree_with_the_safetensors_library(tmp_path):
  st = pytest.importorskip("safetensors.numpy")
  rng = np.random.default_rng(0)
  tensors = {"a.weight": rng.normal(size=(3, 4, 5)).astype(np.float32), "b": rng.normal(size=(7,)).astype(np.float16),
             "c": rng.integers(-9, 9, size=(2, 3)), "d": np.array(rng.normal(), np.float64),
             "e": rng.random((4,)) > 0.5}
  st.save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"format": "pt"})
  chex.assert_trees_all_equal(pretrained.read_safetensors(str(tmp_path / "theirs.safetensors")), tensors)
  pretrained.write_safetensors(str(tmp_path / "ours.safetensors"), tensors, {"format": "pt"})
  chex.assert_trees_all_equal(st.load_file(str(tmp_path / "ours.safetensors")), tensors)


def test_safetensors_bfloat16_agrees_with_torch(tmp_path):
  torch = pytest.importorskip("torch")
  st = pytest.importorskip("safetensors.torch")
  w = torch.randn(3, 5).to(torch.bfloat16)
  st.save_file({"w": w}, str(tmp_path / "bf16.safetensors"))
  ours = pretrained.read_safetensors(str(tmp_path / "bf16.safetensors"))["w"]
  np.testing.assert_array_equal(ours.astype(np.float32), w.float().numpy())
  pretrained.write_safetensors(str(tmp_path / "back.safetensors"), {"w": ours})
  assert torch.equal(st.load_file(str(tmp_path / "back.safetensors"))["w"], w)


def test_torch_bin_reader_agrees_with_torch_load_without_importing_torch(tmp_path):
  torch = pytest.importorskip("torch")
  base = torch.randn(6, 4)
  tensors = {"contiguous": torch.randn(2, 3, 4), "transposed": base.t(), "slice": base[2:5, 1:3],
             "half": torch.randn(5).half(), "bfloat16": torch.randn(5).bfloat16(), "long": torch.arange(7),
             "scalar": torch.tensor(3.5), "parameter": torch.nn.Parameter(torch.randn(2, 2))}
  path = str(tmp_path / "w.bin")
  torch.save(tensors, path)
  ours = pretrained.read_torch_bin(path)
  assert set(ours) == set(tensors)
  for name, tensor in tensors.items():
    expected = tensor.detach().float().numpy() if tensor.dtype == torch.bfloat16 else tensor.detach().numpy()
    np.testing.assert_array_equal(ours[name].astype(expected.dtype), expected, err_msg=name)
    assert ours[name].shape == tuple(tensor.shape)


class _Payload:
  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, "w"))


def test_torch_bin_reader_refuses_anything_but_tensors(tmp_path):
  torch = pytest.importorskip("torch")
  victim = tmp_path / "created_by_unpickling"
  for payload, name in [(_Payload(str(victim)), r"io.open"), (datetime.date(2020, 1, 1), r"datetime.date")]:
    path = str(tmp_path / "evil.bin")
    torch.save({"w": torch.ones(2), "x": payload}, path)
    with pytest.raises(ValueError, match=name):
      pretrained.read_torch_bin(path)
  assert not victim.exists()
  (tmp_path / "old.bin").write_bytes(b"\x80\x02not a zip")
  with pytest.raises(ValueError, match="not a zip-format PyTorch file"):
    pretrained.read_torch_bin(str(tmp_path / "old.bin"))


# ------------------------------------------------------------------------------------------------ layouts


def test_published_cifar10_checkpoint_maps_one_to_one():
  """Every tensor of google/ddpm-cifar10-32 (names and shapes in fixtures/, old attention names) is one of our
  parameters of the same size, and back: 35,746,307 numbers, as in the paper."""
  model, shape = pretrained.unet_from_config(ref.published_config("ddpm-cifar10-32"))
  assert (model.ch, model.ch_mult, model.num_res_blocks, model.attn_resolutions) == (128, (1, 2, 2, 2), 2, (16,))
  assert shape == (32, 32, 3)
  with open(os.path.join(ref.FIXTURES, "ddpm-cifar10-32", "state_dict.json")) as f:
    published = {name: tuple(shape) for name, shape in json.load(f)}
  assert sum(int(np.prod(s)) for s in published.values()) == PAPER_CIFAR10_PARAMETERS
  state_dict = {name: np.zeros(s, np.float32) for name, s in published.items()}
  params = pretrained.params_from_state_dict(state_dict, model, shape)  # raises on any missing or unknown tensor
  assert sum(x.size for x in jax.tree.leaves(params)) == PAPER_CIFAR10_PARAMETERS
  back = pretrained.state_dict_from_params(params, model, shape)
  modern = {name.replace(".query.", ".to_q.").replace(".key.", ".to_k.").replace(".value.", ".to_v.")
            .replace(".proj_attn.", ".to_out.0."): s for name, s in published.items()}
  assert {name: a.shape for name, a in back.items()} == modern


def test_published_256_layout_and_schedule_are_read_as_the_papers():
  model, shape = pretrained.unet_from_config(ref.published_config("ddpm-cat-256"))
  assert (model.ch, model.ch_mult, model.num_res_blocks, model.attn_resolutions) == (128, (1, 1, 2, 2, 4, 4), 2, (16,))
  assert shape == (256, 256, 3) and model.out_channels is None
  keys = pretrained.diffusion_from_scheduler(ref.published_config("ddpm-cat-256", "scheduler_config.json"))
  assert keys == {"diffusion.num_diffusion_steps": 1000, "diffusion.beta_schedule": "linear",
                  "diffusion.beta_kwargs.beta_start": 1e-4, "diffusion.beta_kwargs.beta_end": 0.02,
                  "diffusion.model_var_type": "fixed_small", "diffusion.model_mean_type": "eps",
                  "sampling.clip_denoised": True, "diffusion.rescale_zero_terminal_snr": False}
  np.testing.assert_allclose(pretrained.betas(keys), np.linspace(1e-4, 0.02, 1000), rtol=1e-12)


@pytest.mark.parametrize("name,published", [("ddpm_cifar10_32", "ddpm-cifar10-32")] + [
    (f"ddpm_{m}_256", "ddpm-cat-256") for m in ("celebahq", "church", "bedroom", "cat")])
def test_the_configs_of_the_published_models_match_their_files(name, published):
  """configs/ddpm_*.py build the layout, image size and schedule of the published config.json and
  scheduler_config.json (the four 256x256 models share one layout and schedule)."""
  c = importlib.import_module(f"configs.{name}").get_config()
  model, shape = pretrained.unet_from_config(ref.published_config(published))
  keys = pretrained.diffusion_from_scheduler(ref.published_config(published, "scheduler_config.json"))
  exp = experiment.build(c, info=data.DatasetInfo(c.data.dataset, shape, None, True))
  transfer.check_pretrained(exp, pretrained.Pretrained(model, shape, {}, keys))
  c.model.attn_resolutions = (8,)
  with pytest.raises(ValueError, match=r"model.attn_resolutions = \(8,\), the checkpoint's is \(16,\)"):
    transfer.check_pretrained(experiment.build(c, info=exp.info), pretrained.Pretrained(model, shape, {}, keys))


@pytest.mark.parametrize("key,value", [
    ("attention_head_dim", 8), ("downsample_padding", 1), ("norm_eps", 1e-5), ("flip_sin_to_cos", True),
    ("freq_shift", 0), ("resnet_time_scale_shift", "scale_shift"), ("up_block_types", ["UpBlock2D"] * 4),
    ("down_block_types", ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"]),
    ("block_out_channels", [128, 192, 256, 256]), ("out_channels", 4), ("sample_size", [32, 64]),
    ("cross_attention_dim", 768)])
def test_layouts_our_unet_does_not_compute_are_refused_by_key(key, value):
  cfg = {**ref.published_config("ddpm-cifar10-32"), key: value}
  with pytest.raises(ValueError, match=key):
    pretrained.unet_from_config(cfg)


def test_a_config_json_without_a_key_takes_diffusers_default_for_it():
  cfg = ref.published_config("ddpm-cifar10-32")
  del cfg["freq_shift"]  # UNet2DModel's default is 0, which our embedding does not compute
  with pytest.raises(ValueError, match="freq_shift = 0"):
    pretrained.unet_from_config(cfg)


@pytest.mark.parametrize("key,value", [("variance_type", "learned"), ("beta_schedule", "exotic"),
                                       ("thresholding", True), ("prediction_type", "flow")])
def test_schedulers_we_do_not_reproduce_are_refused_by_key(key, value):
  cfg = {**ref.published_config("ddpm-cifar10-32", "scheduler_config.json"), key: value}
  with pytest.raises(ValueError, match=f"{key} = {value!r}"):
    pretrained.diffusion_from_scheduler(cfg)


def test_zero_terminal_snr_schedulers_are_read_and_written_as_diffusers_makes_them():
  """diffusers' `rescale_betas_zero_snr: true` is our `diffusion.rescale_zero_terminal_snr`; the betas equal
  diffusers' own rescaled ones, and a written scheduler reads back to the same betas."""
  cfg = {**ref.published_config("ddpm-cifar10-32", "scheduler_config.json"), "rescale_betas_zero_snr": True,
         "prediction_type": "v_prediction"}
  keys = pretrained.diffusion_from_scheduler(cfg)
  assert keys["diffusion.rescale_zero_terminal_snr"] is True and keys["diffusion.model_mean_type"] == "v"
  betas = pretrained.betas(keys)
  assert betas[-1] == 1.0
  diffusers = pytest.importorskip("diffusers")
  theirs = diffusers.DDPMScheduler.from_config(cfg).betas.numpy()
  # diffusers computes in float32: ~1e-7 absolute near beta = 0, ~5e-6 relative near T (float64: test_schedules).
  np.testing.assert_allclose(betas, theirs, rtol=1e-5, atol=1e-6)
  written = pretrained.scheduler_from_diffusion(keys, betas)
  assert written["rescale_betas_zero_snr"] is True
  np.testing.assert_allclose(pretrained.betas(pretrained.diffusion_from_scheduler(written)), betas, rtol=1e-12)
  np.testing.assert_allclose(diffusers.DDPMScheduler.from_config(written).betas.numpy(), theirs, rtol=1e-5, atol=1e-6)


def _tiny_state_dict():
  model, shape = pretrained.unet_from_config(ref.tiny_unet_config())
  return pretrained.read_torch_bin(os.path.join(TINY, pretrained.WEIGHTS_BIN)), model, shape


@pytest.mark.parametrize("change,message", [
    (lambda sd: sd.pop("mid_block.attentions.0.key.weight"), "'mid_block.attentions.0.to_k.weight' is missing"),
    (lambda sd: sd.update({"mid_block.extra.weight": np.zeros(3)}), "mid_block.extra.weight"),
    (lambda sd: sd.update({"conv_in.weight": sd["conv_in.weight"].transpose(1, 0, 2, 3)}),
     r"'conv_in.weight' has shape \(1, 8, 3, 3\); this layout needs \(8, 1, 3, 3\)"),
    (lambda sd: sd.update({"mid_block.attentions.0.to_q.weight": sd["mid_block.attentions.0.query.weight"]}),
     "appears twice")])
def test_missing_unknown_and_misshaped_tensors_are_named(change, message):
  state_dict, model, shape = _tiny_state_dict()
  change(state_dict)
  with pytest.raises(ValueError, match=message):
    pretrained.params_from_state_dict(state_dict, model, shape)


# ------------------------------------------------------------------------------------------------ equivalence


def test_the_committed_fixture_gives_diffusers_outputs():
  """The 2022-format .bin (old attention names) read without torch: our UNet's outputs are diffusers'."""
  loaded = pretrained.load(TINY)
  reference = np.load(os.path.join(TINY, "reference.npz"))
  np.testing.assert_allclose(_apply(loaded.model, loaded.params, reference["x"], reference["t"]), reference["out"],
                             atol=1e-5, rtol=1e-5)
  assert np.abs(reference["out"]).max() > 0.1


def _reduced(name: str, widths: list[int], groups: int) -> dict:
  return {**ref.published_config(name), "block_out_channels": widths, "norm_num_groups": groups}


@pytest.mark.slow
@pytest.mark.parametrize("cfg,batch", [(_reduced("ddpm-cifar10-32", [32, 64, 64, 64], 8), 3),
                                       (_reduced("ddpm-cat-256", [8, 8, 16, 16, 32, 32], 4), 2)],
                         ids=["cifar10-32-layout", "256-layout"])
def test_unet_equals_diffusers_unet2dmodel(cfg, batch, tmp_path):
  """The published layouts (blocks, attention placement) at reduced widths, random weights saved by diffusers."""
  pytest.importorskip("diffusers")
  theirs = ref.random_unet(cfg)
  theirs.save_pretrained(str(tmp_path))
  with open(tmp_path / pretrained.SCHEDULER_CONFIG, "w") as f:
    json.dump(ref.published_config("ddpm-cifar10-32", "scheduler_config.json"), f)
  loaded = pretrained.load(str(tmp_path))
  x, t = ref.inputs(loaded.image_shape, batch, 1000, seed=1)
  expected = ref.forward(theirs, x, t)
  np.testing.assert_allclose(_apply(loaded.model, loaded.params, x, t), expected, atol=1e-5, rtol=1e-5)
  assert np.abs(expected).max() > 0.1


def _random_params(model: UNet, shape, seed: int = 0):
  """N(0, 0.1^2) parameters of the shapes `model.init` makes (none at the init's zeros and ones), float32."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *shape)), jnp.zeros((1,), jnp.int32))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32), shapes["params"])


@pytest.mark.parametrize("schedule,kwargs", [("linear", {}), ("quadratic", {"beta_start": 1e-3}), ("cosine", {}),
                                             ("sigmoid", {}), ("cosine", {"s": 0.02})])
def test_save_and_load_round_trip(schedule, kwargs, tmp_path):
  model = UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=4, out_channels=2)
  params = _random_params(model, (8, 8, 1))
  keys = {"diffusion.num_diffusion_steps": 50, "diffusion.beta_schedule": schedule,
          "diffusion.model_mean_type": "v", "diffusion.model_var_type": "learned_range",
          "sampling.clip_denoised": False, **{f"diffusion.beta_kwargs.{k}": v for k, v in kwargs.items()}}
  betas = schedules.get_beta_schedule(schedule, num_diffusion_steps=50, **kwargs)
  pretrained.save(str(tmp_path), params, model, (8, 8, 1), keys, betas)
  loaded = pretrained.load(str(tmp_path))
  chex.assert_trees_all_equal(loaded.params, params)
  assert loaded.model == model and loaded.image_shape == (8, 8, 1)
  np.testing.assert_allclose(pretrained.betas(loaded.config), betas, rtol=1e-12)
  assert {k: loaded.config[k] for k in ("diffusion.model_mean_type", "diffusion.model_var_type",
                                        "sampling.clip_denoised")} == {
      "diffusion.model_mean_type": "v", "diffusion.model_var_type": "learned_range", "sampling.clip_denoised": False}


@pytest.mark.slow
@pytest.mark.parametrize("num_classes", [None, 10])
def test_export_loads_in_diffusers_with_the_same_outputs_and_schedule(num_classes, tmp_path):
  """Our parameters saved, then read by diffusers' own from_pretrained: the same outputs (with class labels for a
  conditional model: our null label is its last class embedding) and the same betas."""
  diffusers = pytest.importorskip("diffusers")
  import torch
  model = UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=4, num_classes=num_classes)
  params = _random_params(model, (8, 8, 1))
  betas = schedules.get_beta_schedule("linear", num_diffusion_steps=50)
  keys = {"diffusion.num_diffusion_steps": 50, "diffusion.beta_schedule": "linear",
          "diffusion.model_mean_type": "eps", "diffusion.model_var_type": "fixed_large", "sampling.clip_denoised": True}
  pretrained.save(str(tmp_path), params, model, (8, 8, 1), keys, betas)
  theirs = diffusers.UNet2DModel.from_pretrained(str(tmp_path)).eval()
  x, t = ref.inputs((8, 8, 1), 4, 50)
  if num_classes is None:
    expected, ours = ref.forward(theirs, x, t), _apply(model, params, x, t)
  else:
    y = np.array([0, 3, 9, 10])  # 10: the null label
    with torch.no_grad():
      expected = theirs(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t),
                        class_labels=torch.from_numpy(y)).sample.numpy().transpose(0, 2, 3, 1)
    ours = np.asarray(model.apply({"params": params}, x, t, jnp.asarray(y)))
  np.testing.assert_allclose(expected, ours, atol=1e-5, rtol=1e-5)
  scheduler = diffusers.DDPMScheduler.from_pretrained(str(tmp_path))
  np.testing.assert_allclose(scheduler.betas.numpy(), betas, rtol=1e-6)
  assert scheduler.config.variance_type == "fixed_large" and scheduler.config.clip_sample
  assert pretrained.load(str(tmp_path)).model == model


# ------------------------------------------------------------------------------------------------ main.py


def _tiny_pretrained_config(data_dir: str):
  c = tiny_config(data_dir)
  c.model.class_conditional = False  # as the fixture
  c.pretrained = TINY
  return c


@pytest.mark.slow
def test_main_samples_and_evaluates_from_a_diffusers_directory(data_dir, tmp_path):
  """main.py --mode sample draws with the directory's weights (the same images as the sampler on the loaded
  parameters, not on a fresh init); --mode eval gives the bound of those weights."""
  workdir = str(tmp_path / "w")
  helpers.run_main("tiny.py", workdir, f"--config.pretrained={TINY}", f"--config.data.data_dir={data_dir}",
                   "--config.model.class_conditional=False", mode="sample")
  images = np.load(os.path.join(workdir, "samples_pretrained.npz"))["samples"]
  assert os.path.exists(os.path.join(workdir, "samples_pretrained.png"))
  c = _tiny_pretrained_config(data_dir)
  exp = experiment.build(c, info=transfer.pretrained_info(c))
  draw = lambda params: data.to_uint8(sampler.Sampler(exp, c.sampling.batch_size)(
      params, c.sampling.num_samples, jax.random.key(c.sampling.seed)))
  np.testing.assert_array_equal(images, draw(transfer.load_pretrained(exp)))
  assert not np.array_equal(images, draw(experiment.init_state(exp.model, exp.tx, exp.info,
                                                              jax.random.key(0)).params))
  c.eval.quality_samples = 0
  result = modes.evaluate(c, workdir)["bpd"]
  assert result["pretrained"] == TINY and result["num_examples"] == 100 and np.isfinite(result["bpd"])
  assert os.path.exists(os.path.join(workdir, "eval_test_pretrained.json"))


def test_a_directory_that_does_not_match_the_config_names_every_difference(data_dir):
  c = _tiny_pretrained_config(data_dir)
  c.model.ch = 16
  c.diffusion.num_diffusion_steps = 40
  exp = experiment.build(c, info=data.DatasetInfo("digits", (8, 8, 1), None, True))
  with pytest.raises(ValueError, match=r"model.ch = 16, the checkpoint's is 8; diffusion.num_diffusion_steps = 40"):
    transfer.load_pretrained(exp)
  c = _tiny_pretrained_config(data_dir)
  c.diffusion.beta_kwargs.beta_end = 0.3
  with pytest.raises(ValueError, match=r"gives betas 0.002..0.3; the checkpoint's are 'linear', 0.002..0.4"):
    transfer.load_pretrained(experiment.build(c, info=data.DatasetInfo("digits", (8, 8, 1), None, True)))


def test_training_starts_from_the_pretrained_weights(data_dir, tmp_path):
  c = _tiny_pretrained_config(data_dir)
  exp = experiment.build(c, info=data.DatasetInfo("digits", (8, 8, 1), None, True))
  from diffusion_jax.run.checkpoint import Checkpointer
  ckpt = Checkpointer(str(tmp_path))
  state = train.restore_or_init(exp, ckpt)
  ckpt.close()
  expected = pretrained.load(TINY).params
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, state.params), expected)
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, state.ema_params), expected)
  assert int(state.step) == 0


def test_export_writes_the_fixture_back_tensor_for_tensor(data_dir, tmp_path):
  """--mode export from the fixture directory: the same tensors under the current names (no value changed), and
  a scheduler file that reads back as the same schedule."""
  c = _tiny_pretrained_config(data_dir)
  out = modes.export(c, str(tmp_path / "w"), str(tmp_path / "export"))
  original = {names.modern_name(k): v for k, v in
              pretrained.read_torch_bin(os.path.join(TINY, pretrained.WEIGHTS_BIN)).items()}
  chex.assert_trees_all_equal(pretrained.read_safetensors(os.path.join(out, pretrained.WEIGHTS_SAFETENSORS)),
                              original)
  np.testing.assert_allclose(pretrained.betas(pretrained.load(out).config),
                             pretrained.betas(pretrained.load(TINY).config), rtol=1e-12)

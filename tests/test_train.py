"""Training end to end: resume, device-count invariance, two processes, logs, sampling and evaluation."""

import json
import os
import re
import shutil

import chex
import jax
import numpy as np
import pytest

import helpers
from diffusion_jax.run import data, experiment, modes, sampler, train, trained
from diffusion_jax.run import step as step_lib
from helpers import tiny_config as _config

pytestmark = pytest.mark.slow  # end-to-end runs


@pytest.fixture(scope="module")
def reference_run(data_dir, tmp_path_factory):
  """8 uninterrupted steps in-process (checkpoints at 4 and 8)."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  config = _config(data_dir)
  state = jax.tree.map(np.asarray, train.train_and_evaluate(config, workdir))
  return config, workdir, state


def test_run_writes_logs_samples_and_checkpoints(reference_run):
  config, workdir, state = reference_run
  assert int(state.step) == 8
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [line["step"] for line in lines] == [2, 4, 6, 8]
  for line in lines:
    assert {"loss", "grad_norm", "learning_rate", "steps_per_s", "images_per_s", "skipped_steps"} <= set(line)
    assert np.isfinite(line["loss"]) and line["skipped_steps"] == 0
  assert lines[0]["learning_rate"] == pytest.approx(config.training.learning_rate * 2 / 2 * 0.5)  # warmup step 1 of 2
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert os.path.getsize(os.path.join(workdir, "samples", "step_00000008.png")) > 0
  # The checkpoint holds exactly the returned state.
  chex.assert_trees_all_equal(helpers.load_state(config, workdir), state)
  # EMA moved away from the parameters' initial values, and differs from the parameters.
  assert not np.allclose(state.ema_params["conv_in"]["kernel"], state.params["conv_in"]["kernel"])


def test_resume_reaches_the_same_parameters(reference_run, tmp_path):
  config, _, reference = reference_run
  workdir = str(tmp_path)
  first = _config(config.data.data_dir, num_train_steps=4)
  train.train_and_evaluate(first, workdir)
  resumed = jax.tree.map(np.asarray, train.train_and_evaluate(config, workdir))
  chex.assert_trees_all_equal(resumed, reference)  # bitwise on CPU
  # Re-running a finished run changes nothing.
  again = jax.tree.map(np.asarray, train.train_and_evaluate(config, workdir))
  chex.assert_trees_all_equal(again, reference)


def test_steps_per_call_trains_the_same_model(reference_run, tmp_path):
  config, _, reference = reference_run
  scanned = _config(config.data.data_dir, steps_per_call=2)
  state = jax.tree.map(np.asarray, train.train_and_evaluate(scanned, str(tmp_path)))
  chex.assert_trees_all_close(state, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.cpu_only
@pytest.mark.parametrize("k", [1, 2])
def test_steps_per_call_compile_to_xla_cpus_convolution_kernels(k, reference_run):
  """Inside a while loop XLA:CPU would leave the weight-gradient convolutions in a layout that only its
  naive emitter runs (f01b_i01o->01bf, ~30x slower); every convolution must be in the kernels' layout,
  for one step per call (where `lax.scan` would still emit a loop of one trip) as for several. The program
  is the trainer's own (compiled already by the runs above: the persistent cache serves it)."""
  config = _config(reference_run[0].data.data_dir, steps_per_call=k)
  exp = experiment.build(config)
  state = experiment.abstract_state(exp)
  B = config.training.global_batch_size
  batch = {"x": jax.ShapeDtypeStruct((k, B, 8, 8, 1), np.uint8), "label": jax.ShapeDtypeStruct((k, B), np.int32)}
  hlo = step_lib.make_train_step(exp, state).lower(state, batch, exp.schedule).compile().as_text()
  labels = re.findall(r" convolution\(.*?dim_labels=([\w>-]+)", hlo)
  assert len(labels) == k * (3 * 20 - 1)  # k steps x 20 convs x (forward, weight, input grads), no image grad
  assert set(labels) == {"b01f_01io->b01f"}


def test_worker_processes_train_the_same_run(reference_run, tmp_path, caplog):
  """data.num_workers = 2: the loop reads through grain's worker processes and ends with the same state."""
  config, _, state = reference_run
  config = config.copy_and_resolve_references()
  config.data.num_workers = 2
  with caplog.at_level("INFO"):
    got = train.train_and_evaluate(config, str(tmp_path))
  assert "Reading batches from 0 on with 2 worker processes." in caplog.text
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, got), state)


def test_load_gives_the_trained_run_and_its_overrides(reference_run):
  config, workdir, state = reference_run
  run = trained.load(workdir)
  assert run.step == 8 and run.experiment.info == data.DatasetInfo("digits", (8, 8, 1), 10, True, tuple("0123456789"))
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, run.params), state.ema_params)
  raw = trained.load(workdir, **{"sampling.use_ema": False})
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, raw.params), state.params)
  ddim = trained.load(workdir, **{"sampling.sampler": "ddim", "sampling.num_steps": 5})
  a, b = run.sample(8, jax.random.key(0)), ddim.sample(8, jax.random.key(0))
  assert a.shape == b.shape == (8, 8, 8, 1) and not np.allclose(a, b)
  with pytest.raises(ValueError, match=r'Did you mean "num_steps" \(sampling.num_steps\)'):
    trained.load(workdir, **{"sampling.num_step": 5})
  with pytest.raises(FileNotFoundError, match="is not a workdir of main.py --mode train"):
    trained.load(os.path.join(workdir, "samples"))


def test_load_reads_a_workdir_written_before_the_newer_keys(reference_run, tmp_path):
  """A config.json without the sampling keys added since (spacing, order, guidance) loads and samples as before."""
  config, workdir, _ = reference_run
  older = tmp_path / "older"
  shutil.copytree(workdir, older)
  with open(older / "config.json") as f:
    saved = json.load(f)
  for section, name in [("sampling", "spacing"), ("sampling", "order"), ("sampling", "guidance_scale"),
                        ("sampling", "labels"), ("eval", "guidance_scales")]:
    del saved[section][name]
  del saved["pretrained"]
  with open(older / "config.json", "w") as f:
    json.dump(saved, f)
  np.testing.assert_array_equal(trained.load(str(older)).sample(8, jax.random.key(0)),
                                trained.load(workdir).sample(8, jax.random.key(0)))


def test_sample_and_eval_modes(reference_run):
  config, workdir, _ = reference_run
  path = modes.sample(config, workdir)
  samples = np.load(path)["samples"]
  # sampling.num_samples = 8 exactly, the classes of sampling.labels ("all") in turn
  assert samples.shape == (8, 8, 8, 1) and samples.dtype == np.uint8
  np.testing.assert_array_equal(np.load(path)["labels"], np.arange(8))
  assert os.path.exists(path.replace(".npz", ".png"))
  both = modes.evaluate(config, workdir)
  result = both["bpd"]
  assert result["num_examples"] == 100
  assert len(result["terms_bpd"]) == config.diffusion.num_diffusion_steps
  assert np.isfinite(result["bpd"]) and result["bpd"] > 0
  assert result["bpd"] == pytest.approx(result["prior_bpd"] + sum(result["terms_bpd"]), rel=1e-5)
  with open(os.path.join(workdir, "eval_test_00000008.json")) as f:
    assert json.load(f)["bpd"] == result["bpd"]


@pytest.mark.parametrize("use_ema", [True, False])
def test_sample_mode_uses_the_parameters_it_is_told_to(reference_run, use_ema):
  """`--mode sample` draws with the EMA parameters when sampling.use_ema, else with the raw ones: its images are
  those of the sampler run on exactly those parameters (and not on the others)."""
  config, workdir, state = reference_run
  c = _config(config.data.data_dir)
  c.sampling.use_ema = use_ema
  written = np.load(modes.sample(c, workdir))
  images, labels = written["samples"], written["labels"]
  exp = experiment.build(c)
  draw = lambda params: data.to_uint8(sampler.Sampler(exp, c.sampling.batch_size)(
      params, len(labels), jax.random.key(c.sampling.seed), labels=labels))
  chosen, other = (state.ema_params, state.params) if use_ema else (state.params, state.ema_params)
  np.testing.assert_array_equal(images, draw(chosen))
  assert not np.array_equal(images, draw(other))


def test_a_conditional_export_samples_as_its_run(reference_run, tmp_path):
  """configs/tiny.py is class-conditional: its export (with the label embedding) samples the run's own grid."""
  config, workdir, _ = reference_run
  export = modes.export(config, workdir, str(tmp_path / "export"))
  from_run = np.load(modes.sample(config, workdir))
  c = _config(config.data.data_dir)
  c.pretrained = export
  from_export = np.load(modes.sample(c, str(tmp_path / "w")))
  np.testing.assert_array_equal(from_export["labels"], from_run["labels"])
  np.testing.assert_array_equal(from_export["samples"], from_run["samples"])

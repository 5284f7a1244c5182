"""Checkpoints: what is saved is restored exactly, a mismatched state is named, an unfinished write is ignored, a
damaged step is detected by its checksums and passed over, a failed save is reported and harms nothing."""

import hashlib
import json
import os
import resource
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.run.checkpoint import Checkpointer, CheckpointError


def _state(scale: float = 1.0, width: int = 3):
  return {"step": jnp.int32(4), "params": {"w": scale * jnp.arange(2 * width, dtype=jnp.float32).reshape(2, width),
                                           "b": jnp.full((width,), scale, jnp.float32)}}


def _abstract(state):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)


def test_save_then_restore_gives_back_the_state_and_its_record(tmp_path):
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  assert ckpt.latest_step() is None
  ckpt.save(4, _state(), {"step": 4, "note": "first"})
  ckpt.save(8, _state(2.0), {"step": 8})
  assert ckpt.save(8, _state(3.0), {"step": 8}) is False  # a step is written once
  ckpt.close()
  reader = Checkpointer(str(tmp_path), read_only=True)
  assert reader.all_steps() == [4, 8] and reader.latest_step() == 8
  state, meta = reader.restore(_abstract(_state()))
  jax.tree.map(np.testing.assert_array_equal, state, _state(2.0))
  assert meta == {"step": 8}
  state, meta = reader.restore(_abstract(_state()), step=4)
  jax.tree.map(np.testing.assert_array_equal, state, _state())
  assert meta["note"] == "first"
  reader.close()


@pytest.mark.parametrize("change, match", [
    (lambda s: {**s, "params": {**s["params"], "w": jnp.zeros((2, 4), jnp.float32)}},
     r"parameter params/w has shape \(2, 3\) float32 in the checkpoint but \(2, 4\) float32 here"),
    (lambda s: {**s, "params": {**s["params"], "w": s["params"]["w"].astype(jnp.bfloat16)}}, "bfloat16 here"),
    (lambda s: {**s, "params": {**s["params"], "extra": jnp.zeros(1)}}, "params/extra of this config is not in"),
    (lambda s: {"step": s["step"], "params": {"w": s["params"]["w"]}}, "params/b of the checkpoint is not in"),
])
def test_a_state_of_another_shape_is_refused_by_name(tmp_path, change, match):
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(4, _state(), {"step": 4})
  ckpt.close()
  reader = Checkpointer(str(tmp_path), read_only=True)
  with pytest.raises(ValueError, match=match):
    reader.restore(_abstract(change(_state())))
  reader.close()


def test_an_unfinished_write_is_never_restored(tmp_path):
  """A step directory that Orbax has not renamed into place (a kill mid-write) is not a checkpoint, and the next
  save removes it."""
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(4, _state(), {"step": 4})
  ckpt.close()
  directory = os.path.join(str(tmp_path), "checkpoints")
  partial = os.path.join(directory, "8.orbax-checkpoint-tmp-1234")
  shutil.copytree(os.path.join(directory, "4"), partial)
  reader = Checkpointer(str(tmp_path), read_only=True)
  assert reader.latest_step() == 4
  reader.close()
  writer = Checkpointer(str(tmp_path), async_save=False)
  writer.save(12, _state(), {"step": 12})
  writer.close()
  assert sorted(os.listdir(directory)) == ["12", "4"]


def _saved(workdir, steps=(4, 8)):
  """Complete checkpoints at each of `steps` in `workdir`, the state at step s scaled by s; their directory."""
  ckpt = Checkpointer(str(workdir), async_save=False)
  for s in steps:
    ckpt.save(s, _state(float(s)), {"step": s})
  ckpt.close()
  return os.path.join(str(workdir), "checkpoints")


def _files(directory):
  return sorted(os.path.relpath(os.path.join(r, f), directory) for r, _, fs in os.walk(directory) for f in fs)


def _digests(directory):
  return {f: hashlib.sha256(open(os.path.join(directory, f), "rb").read()).hexdigest() for f in _files(directory)}


CORRUPTIONS = {
    "truncated": lambda data: data[:len(data) // 2],
    "overwritten": lambda data: bytes(len(data)),  # zeros of the same length, as a bad disk or a stale block
    "one bit flipped": lambda data: (data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 1])
                                     + data[len(data) // 2 + 1:]),
    "deleted": None,
}


def _corrupt(path, how):
  if CORRUPTIONS[how] is None:
    os.remove(path)
  else:
    data = open(path, "rb").read()
    open(path, "wb").write(CORRUPTIONS[how](data))


def _restored_step(workdir, **kwargs):
  reader = Checkpointer(str(workdir), **kwargs)
  state, meta = reader.restore(_abstract(_state()))
  reader.close()
  return state, meta["step"]


def test_every_step_carries_the_checksums_of_all_its_files(tmp_path):
  directory = _saved(tmp_path)
  for step in ("4", "8"):
    manifest = json.load(open(os.path.join(directory, step, "checksums.json")))
    assert sorted(manifest["files"]) == [f for f in _files(os.path.join(directory, step)) if f != "checksums.json"]
    for rel, entry in manifest["files"].items():
      data = open(os.path.join(directory, step, rel), "rb").read()
      assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_each_file_of_a_step_damaged_is_detected_by_name_and_the_previous_step_restored(tmp_path, how, caplog):
  """Every file a step holds (Orbax's array data, OCDBT manifests, tree metadata, sharding, JSON record, step
  metadata, commit markers, and the checksums themselves): damaged, the read falls back to the step before, exactly."""
  pristine = tmp_path / "pristine"
  step_files = _files(os.path.join(_saved(pristine), "8"))
  assert len(step_files) >= 12 and "checksums.json" in step_files
  for rel in step_files:
    workdir = tmp_path / f"{how}-{rel.replace('/', '_')}"
    shutil.copytree(pristine, workdir)
    _corrupt(os.path.join(workdir, "checkpoints", "8", rel), how)
    caplog.clear()
    with caplog.at_level("WARNING"):
      state, step = _restored_step(workdir, read_only=True)
    assert step == 4, rel
    jax.tree.map(np.testing.assert_array_equal, state, _state(4.0))
    assert f"Checkpoint step 8 in {workdir}/checkpoints is damaged or incomplete: {rel}" in caplog.text, rel
    assert "Falling back to step 4" in caplog.text


def test_training_sets_a_damaged_step_aside_and_saves_that_step_again(tmp_path):
  directory = _saved(tmp_path)
  _corrupt(os.path.join(directory, "8", "meta", "metadata"), "one bit flipped")
  damaged = _digests(os.path.join(directory, "8"))
  writer = Checkpointer(str(tmp_path), async_save=False)
  state, meta = writer.restore(_abstract(_state()))
  assert meta["step"] == 4 and writer.all_steps() == [4]
  assert _digests(os.path.join(str(tmp_path), "checkpoints_corrupt", "8")) == damaged  # kept, not deleted
  writer.save(8, _state(8.0), {"step": 8})
  writer.close()
  state, step = _restored_step(tmp_path, read_only=True)
  assert step == 8
  jax.tree.map(np.testing.assert_array_equal, state, _state(8.0))


def test_refusing_the_fallback_stops_at_the_damaged_step_and_changes_nothing(tmp_path):
  directory = _saved(tmp_path)
  _corrupt(os.path.join(directory, "8", "state", "_METADATA"), "truncated")
  before = _digests(directory)
  with pytest.raises(CheckpointError, match=r"Checkpoint step 8: state/_METADATA is \d+ bytes, \d+ when saved "
                                            r"\(truncated or extended\) in .*on_corrupt_checkpoint = 'error' stops "
                                            r"here. Step 4 is intact"):
    _restored_step(tmp_path, on_corrupt="error")
  assert _digests(directory) == before and not os.path.exists(os.path.join(str(tmp_path), "checkpoints_corrupt"))


def test_no_intact_step_is_a_clear_error_and_nothing_is_overwritten(tmp_path):
  directory = _saved(tmp_path)
  _corrupt(os.path.join(directory, "8", "meta", "metadata"), "deleted")
  _corrupt(os.path.join(directory, "4", "checksums.json"), "overwritten")
  before = _digests(directory)
  with pytest.raises(CheckpointError, match=r"No checkpoint in .* is intact \(step 8: meta/metadata is missing; "
                                            r"step 4: checksums.json is damaged"):
    _restored_step(tmp_path)
  assert _digests(directory) == before


def test_a_workdir_saved_before_checksums_restores_unverified_with_a_warning(tmp_path, caplog):
  directory = _saved(tmp_path)
  for step in ("4", "8"):
    os.remove(os.path.join(directory, step, "checksums.json"))
  with caplog.at_level("WARNING"):
    state, step = _restored_step(tmp_path, read_only=True)
  assert step == 8 and "saved without checksums" in caplog.text
  jax.tree.map(np.testing.assert_array_equal, state, _state(8.0))


def test_a_save_that_fails_for_lack_of_space_names_the_step_and_leaves_the_earlier_ones_intact(tmp_path):
  """A write limit on this process (RLIMIT_FSIZE: writes past it fail with EFBIG, as a full disk's with ENOSPC)."""
  directory = _saved(tmp_path, steps=(4,))
  before = _digests(os.path.join(directory, "4"))
  writer = Checkpointer(str(tmp_path), async_save=False)
  noise = jax.random.normal(jax.random.key(0), (2, 40_000))  # 320 kB that do not compress
  big = {"step": jnp.int32(8), "params": {"w": noise, "b": jnp.ones(3, jnp.float32)}}
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
  try:
    with pytest.raises(CheckpointError, match=rf"Could not save checkpoint step 8 to {directory}/8: .*File too large.*"
                                              r"The steps saved before it are intact \(4\)"):
      writer.save(8, big, {"step": 8})
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
  writer.close()
  assert _digests(os.path.join(directory, "4")) == before
  state, step = _restored_step(tmp_path)  # a writer: removes the partial step's temporary directory
  assert step == 4 and os.listdir(directory) == ["4"]
  jax.tree.map(np.testing.assert_array_equal, state, _state(4.0))

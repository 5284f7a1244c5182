"""Checkpoints: what is saved is restored exactly, a mismatched state is named, an unfinished write is ignored."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.run.checkpoint import Checkpointer


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

"""The mesh and the batch layout over devices: each device holds its slice of the batch, and gather undoes it.

The device checks run in a subprocess with 4 CPU devices (the session itself has one)."""

import json
import subprocess
import sys
import textwrap

import pytest

import helpers
from diffusion_jax.run import parallel

_SCRIPT = textwrap.dedent("""
    import json
    import jax, numpy as np
    from diffusion_jax.run import parallel
    mesh = parallel.make_mesh()
    x = np.arange(2 * 8 * 3, dtype=np.float32).reshape(2, 8, 3)  # (steps per call, batch, features)
    arrays = parallel.global_batch({"x": x, "label": np.arange(16).reshape(2, 8)}, mesh, leading_axes=1)
    shards = {}
    for shard in arrays["x"].addressable_shards:
      shards[str(shard.device.id)] = [shard.index[1].start, shard.index[1].stop,
                                      bool(np.array_equal(np.asarray(shard.data), x[:, shard.index[1]]))]
    replicated = jax.device_put(np.float32(3.5), parallel.replicated(mesh))
    print(json.dumps({
        "devices": jax.device_count(), "axis": list(mesh.axis_names), "shards": shards,
        "gathered": bool(np.array_equal(parallel.gather(arrays["x"]), x)),
        "labels": bool(np.array_equal(parallel.gather(arrays["label"]), np.arange(16).reshape(2, 8))),
        "spec": list(parallel.batch_sharding(mesh, 1).spec), "host_value": float(parallel.host_value(replicated)),
    }))
""")


def test_a_batch_is_split_along_data_in_device_order_and_gathered_back():
  out = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=helpers.ROOT, env=helpers.env(devices=4),
                       capture_output=True, text=True, timeout=120, check=True).stdout
  got = json.loads(out.splitlines()[-1])
  assert got["devices"] == 4 and got["axis"] == ["data"]
  assert got["spec"] == [None, "data"]
  # Device i holds batch rows 2i, 2i + 1 of every step, exactly those values.
  assert got["shards"] == {str(i): [2 * i, 2 * i + 2, True] for i in range(4)}
  assert got["gathered"] and got["labels"]
  assert got["host_value"] == 3.5


@pytest.mark.parametrize("args, match", [
    (("localhost:1234", None, None), "must be given together"),
    (("localhost:1234", 2, 2), r"process_id = 2 must be in \[0, num_processes = 2\)"),
])
def test_distributed_arguments_are_checked_before_connecting(args, match):
  with pytest.raises(ValueError, match=match):
    parallel.initialize_distributed(*args)

"""The train step's update alone: Adam + EMA per parameter array (as `step.train_step` does) or fused over one
flattened buffer (a multi-tensor update), for a workload's UNet parameters.

    python benchmarks/optimizer.py [--workload cpu] [--out benchmarks/results/optimizer_cpu.json]

Rows, each one compiled call with its state donated, as in the train step:
- per array: `optax.adam` + `optax.apply_updates` + `optax.incremental_update` over the parameter tree;
- flat, state kept flat: the same transformations on one float32 vector each for the gradients, parameters,
  moments and EMA (the lower bound of a multi-tensor update: no packing);
- flat, gradients packed and parameters unpacked: the flat update plus the copies a flat state costs in the step
  (the gradient tree concatenated into one vector, the parameter tree sliced back out for the next forward pass).
GB/s counts the 9 float32 arrays an update reads or writes per parameter (gradient, parameter, two moments and
EMA in; parameter, moments and EMA out).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import jax
import jax.flatten_util
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
import train_throughput  # noqa: E402
from diffusion_jax.run import data, experiment  # noqa: E402

DECAY = 0.9999


def per_array(tx: optax.GradientTransformation, grads, params, ema, opt_state):
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  return params, optax.incremental_update(params, ema, 1.0 - DECAY), opt_state


def packed(tx: optax.GradientTransformation, unravel, grads, flat_params, flat_ema, opt_state):
  flat_grads = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)])
  flat_params, flat_ema, opt_state = per_array(tx, flat_grads, flat_params, flat_ema, opt_state)
  return unravel(flat_params), flat_params, flat_ema, opt_state


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workload", default="cpu", choices=sorted(train_throughput.WORKLOADS))
  parser.add_argument("--out", default=None)
  args = common.parse_args(parser)
  out = args.out or f"benchmarks/results/optimizer_{args.workload}.json"
  os.makedirs(os.path.dirname(out), exist_ok=True)
  c = train_throughput.workload_config(args.workload, None, "float32", 1)
  info = data.DatasetInfo("cifar10-shaped", (32, 32, 3), None, True)
  model = experiment.build_model(c, info)
  tx = optax.adam(2e-4)
  params = common.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,), jnp.int32))["params"])(
      jax.random.key(0))
  leaves = jax.tree.leaves(params)
  grads = jax.tree.map(lambda p: 1e-3 * jnp.ones_like(p), params)
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  flat_grads = 1e-3 * jnp.ones_like(flat)

  update = common.jit(functools.partial(per_array, tx), donate_argnums=(1, 2, 3))  # a tree or one flat vector
  packed_step = common.jit(functools.partial(packed, tx, unravel), donate_argnums=(1, 2, 3))
  holders = {"tree": [params, jax.tree.map(jnp.copy, params), tx.init(params)],
             "flat": [flat, jnp.copy(flat), tx.init(flat)],
             "packed": [jnp.copy(flat), jnp.copy(flat), tx.init(flat)]}

  def run_tree():
    holders["tree"] = list(update(grads, *holders["tree"]))
    return holders["tree"]

  def run_flat():
    holders["flat"] = list(update(flat_grads, *holders["flat"]))
    return holders["flat"]

  def run_packed():
    tree, *holders["packed"] = packed_step(grads, *holders["packed"])
    return tree

  rows = []
  for name, fn in [("per array (optax over the parameter tree, as train_step)", run_tree),
                   ("flat, state kept flat (no packing)", run_flat),
                   ("flat, gradients packed + parameters unpacked", run_packed)]:
    seconds = common.time_call(fn, repeats=7, min_seconds=1.0)
    rows.append({"update": name, "ms": seconds * 1e3, "arrays": len(leaves),
                 "gbyte_per_s": 9 * 4 * flat.size / seconds / 1e9})
    print(rows[-1], flush=True)
  common.report(f"Adam + EMA update, {args.workload} workload ({flat.size:,} parameters in {len(leaves)} arrays; "
                f"{common.cpu_description()})", rows, ["update", "ms", "arrays", "gbyte_per_s"], out)


if __name__ == "__main__":
  main()

"""Train, sample from, or evaluate a DDPM.

    python main.py --config configs/digits.py --workdir workdirs/digits [--mode train|sample|eval|edit|export]
        [--config.training.num_train_steps=1000 ...]

The published DDPM checkpoints (diffusers format, downloaded by you) sample and evaluate with
their config: python main.py --config configs/ddpm_cifar10_32.py --config.pretrained=PATH --workdir W --mode sample

Any key of the config can be set with --config.KEY=VALUE; every key, its default and
its meaning are in configs/default.py. Training resumes from the latest intact checkpoint
when re-run with the same --workdir. Multi-host: pass --coordinator_address,
--num_processes and --process_id to every process (or set JAX_COORDINATOR_ADDRESS;
on clusters JAX detects by itself, such as TPU pods and SLURM, set
DIFFUSION_JAX_DISTRIBUTED=1); a process silent for --host_timeout_s ends the others
(exit status 3).
"""

from __future__ import annotations

import logging as py_logging
import os
import re
import runpy
import sys
from collections.abc import Sequence

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from diffusion_jax.run import config as config_lib
from diffusion_jax.run import edit, hosts, modes, parallel, train
from diffusion_jax.run.checkpoint import CheckpointError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py). Override any key with --config.KEY=VALUE, e.g. "
    "--config.training.num_train_steps=1000; every key, its default and its meaning: configs/default.py.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "edit", "export"],
                  "What to do; edit inpaints, SDEdits or inverts images (config.edit); export writes the latest "
                  "checkpoint as a diffusers-format directory.")
flags.DEFINE_string("export_dir", None, "--mode export: where to write (default: <workdir>/diffusers).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
flags.DEFINE_integer("host_timeout_s", 60, "Multi-host: a process silent this long is lost; every other process "
                     f"then exits with status {hosts.LOST_EXIT_STATUS}, naming it.", lower_bound=1)
flags.DEFINE_bool("traceback", False, "Show the full traceback of a bad-input error instead of one paragraph.")
flags.mark_flags_as_required(["config", "workdir"])

# Errors that report bad input (config, flags, data, workdir) or a documented stop: one paragraph, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, CheckpointError)


def _keep(record: py_logging.LogRecord) -> bool:
  """Our INFO lines and everyone's warnings, not the INFO chatter of Orbax and friends."""
  return record.levelno >= py_logging.WARNING or "diffusion_jax" in record.pathname or "main.py" in record.pathname


def _fail(error: BaseException) -> None:
  sys.stderr.write(f"{type(error).__name__}: {error}\n")
  sys.exit(1)


def _config_args_problem(argv: Sequence[str]) -> str | None:
  """What is wrong with `--config` or a `--config.KEY` of `argv`, in one paragraph; None if nothing is."""
  path = next((a.split("=", 1)[1] for a in argv if re.match(r"-{1,2}config=", a)), None)
  if path is None and "--config" in argv[:-1]:
    path = argv[list(argv).index("--config") + 1]
  if path is None:
    return None  # absl says that --config is required
  if not os.path.isfile(path):
    return f"--config {path!r}: no such file; the configs are in configs/*.py."
  try:
    config = runpy.run_path(path)["get_config"]()
  except Exception as e:  # whatever a broken config file raises
    return f"--config {path!r} could not be loaded: {type(e).__name__}: {e}"
  keys = config_lib.flat_keys(config)
  for arg in argv:
    match = re.match(r"-{1,2}(?:no)?config\.([\w.]+)", arg)
    if match and match.group(1) not in keys:
      return config_lib.unknown_key_message(config, match.group(1))
  return None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every bad flag or config key reported as one paragraph (exit status 2)."""
  problem = _config_args_problem(argv)
  if problem is None:
    try:
      return FLAGS(argv)
    except flags.Error as e:
      problem = str(e)
  sys.stderr.write(f"ValueError: {' '.join(problem.split())}\nSee python main.py --help.\n")
  sys.exit(2)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_keep)
  run = {"train": train.train_and_evaluate, "sample": modes.sample, "eval": modes.evaluate, "edit": edit.edit,
         "export": lambda config, workdir: modes.export(config, workdir, FLAGS.export_dir)}[FLAGS.mode]
  try:
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                                    heartbeat_timeout_s=max(100, 2 * FLAGS.host_timeout_s))
    with hosts.Watchdog(FLAGS.host_timeout_s) as watchdog:  # with several processes: ends this one if one is lost
      try:
        run(FLAGS.config, FLAGS.workdir)
      except (jax.errors.JaxRuntimeError, TimeoutError):  # a collective or barrier failed: was a process lost?
        watchdog.wait_for_loss()
        raise
  except USER_ERRORS as e:
    if FLAGS.traceback:
      raise
    _fail(e)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)

"""Train, sample from, or evaluate a DDPM.

    python main.py --config configs/digits.py --workdir workdirs/digits [--mode train|sample|eval]
        [--config.training.num_train_steps=1000 ...]

Training resumes from the latest checkpoint when re-run with the same --workdir.
Multi-host: pass --coordinator_address, --num_processes and --process_id to
every process (or set JAX_COORDINATOR_ADDRESS and friends).
"""

import logging as py_logging

from absl import app, flags, logging
from ml_collections import config_flags

from diffusion_jax import evaluate, parallel, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval"], "What to do.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
flags.mark_flags_as_required(["config", "workdir"])


def _keep(record: py_logging.LogRecord) -> bool:
  """Our INFO lines and everyone's warnings; not the INFO chatter of Orbax and friends."""
  return record.levelno >= py_logging.WARNING or "diffusion_jax" in record.pathname or "main.py" in record.pathname


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_keep)
  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  {"train": train.train_and_evaluate, "sample": evaluate.sample, "eval": evaluate.evaluate_bpd}[FLAGS.mode](
      FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)

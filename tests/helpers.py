"""Running main.py for real in subprocesses, and reading what it wrote."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()
# What README's main.py commands get appended in the tests: a few steps, T = 50, 21 network calls a sample, no quality
# figure (its own tests score a trained model: test_metrics_quality.py).
SMALL_MAIN = ["--config.training.num_train_steps=20", "--config.training.warmup_steps=5",
              "--config.training.log_every_steps=10", "--config.training.checkpoint_every_steps=20",
              "--config.training.sample_every_steps=20", "--config.diffusion.num_diffusion_steps=50",
              "--config.sampling.num_steps=21", "--config.sampling.preview_samples=16",
              "--config.eval.num_examples=100", "--config.eval.quality_samples=0",
              "--config.eval.quality_every_steps=0"]


def readme_blocks(lang: str) -> list[str]:
  """The code blocks of README.md in language `lang`, in order."""
  return [code for block_lang, code in re.findall(r"```(\w+)\n(.*?)```", README, re.S) if block_lang == lang]


def readme_main_commands() -> list[list[str]]:
  """The words of every `python main.py ...` command in README's bash blocks, in order, but for templates (`NAME.py`,
  `PATH/TO/...`: the user's own images, which test_data_folder.py trains on through main.py)."""
  commands = []
  for block in readme_blocks("bash"):
    for line in block.splitlines():
      for part in line.split("#")[0].split("&&"):
        words = shlex.split(part)
        if words[:2] == ["python", "main.py"] and "NAME.py" not in part and "PATH/TO/" not in part:
          commands.append(words)
  return commands


def tiny_config(data_dir: str, **training):
  """configs/tiny.py reading the digits from `data_dir`, with `training.*` overrides."""
  from configs import tiny
  c = tiny.get_config()
  c.data.data_dir = data_dir
  c.eval.cache_dir = os.path.join(os.path.dirname(data_dir), "quality_cache")
  for k, v in training.items():
    c.training[k] = v
  return c


def main_command(config: str, workdir: str, *overrides: str, mode: str = "train") -> list[str]:
  return [sys.executable, os.path.join(ROOT, "main.py"), f"--config={os.path.join(ROOT, 'configs', config)}",
          f"--workdir={workdir}", f"--mode={mode}", *overrides]


def env(devices: int = 1) -> dict[str, str]:
  e = dict(os.environ)
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  e["JAX_PLATFORMS"] = "cpu"
  e["PYTHONUNBUFFERED"] = "1"
  return e


def run_main(config: str, workdir: str, *overrides: str, mode: str = "train", devices: int = 1,
             timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
  proc = subprocess.run(main_command(config, workdir, *overrides, mode=mode), env=env(devices), cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"main.py failed ({proc.returncode}):\n{proc.stderr[-5000:]}")
  return proc


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def load_state(config, workdir: str, step: int | None = None):
  """The TrainState a checkpoint of `workdir` holds, as numpy, via the library's own restore path."""
  from diffusion_jax.run import experiment
  from diffusion_jax.run.checkpoint import Checkpointer
  exp = experiment.build(config, workdir)
  ckpt = Checkpointer(workdir, read_only=True)
  state, _ = ckpt.restore(experiment.abstract_state(exp), step)
  ckpt.close()
  return jax.tree.map(np.asarray, state)


"""The house's rules, checked: imports run one way, and the code passes the linter configured in pyproject.toml."""

import json
import subprocess
import sys

import pytest

import helpers

RUNTIME = ["config", "experiment", "step", "train", "evaluate", "data", "parallel", "checkpoint", "logs", "images",
           "compiler", "metrics.quality", "metrics.classifier"]
MATH = ["schedules", "diffusion", "losses", "sampling", "checks", "models.unet", "models.mlp", "models.layers",
        "pretrained"]


def _loaded_after(module: str) -> set[str]:
  """The diffusion_jax modules and heavy libraries in sys.modules after importing `module` in a fresh process."""
  code = (f"import sys, json, importlib; importlib.import_module({module!r}); "
          "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('diffusion_jax', 'orbax', "
          "'tensorflow_datasets', 'grain', 'optax')))))")
  out = subprocess.run([sys.executable, "-c", code], cwd=helpers.ROOT, env=helpers.env(), capture_output=True,
                       text=True, timeout=120, check=True).stdout
  return set(json.loads(out.splitlines()[-1]))


@pytest.mark.parametrize("name", ["diffusion_jax"] + [f"diffusion_jax.{m}" for m in MATH])
def test_the_math_imports_nothing_of_the_runtime(name):
  loaded = _loaded_after(name)
  assert not loaded & {f"diffusion_jax.{m}" for m in RUNTIME}
  assert not any(m.startswith(("orbax", "tensorflow_datasets", "grain", "optax")) for m in loaded)


@pytest.mark.parametrize("name", ["diffusion_jax.run.modes", "diffusion_jax.run.quality"])
def test_sample_eval_and_metrics_never_import_the_training_loop(name):
  loaded = _loaded_after(name)
  assert "diffusion_jax.run.data" in loaded
  assert not loaded & {"diffusion_jax.run.train", "diffusion_jax.run.step"}


def test_loading_a_diffusers_checkpoint_never_imports_torch():
  code = ("import sys, os; from diffusion_jax import pretrained; "
          "pretrained.load(os.path.join('tests', 'fixtures', 'ddpm-tiny')); "
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'safetensors')))")
  out = subprocess.run([sys.executable, "-c", code], cwd=helpers.ROOT, env=helpers.env(), capture_output=True,
                       text=True, timeout=120, check=True).stdout
  assert out.splitlines()[-1] == "[]"


def test_lint():
  ruff = pytest.importorskip("ruff")
  del ruff
  proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."],
                        cwd=helpers.ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout[-3000:]

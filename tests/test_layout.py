"""The house's rules, checked: the folders show the math and the runtime apart, imports run one way, no module is
too long, tests use only public names, and the code passes the linter configured in pyproject.toml."""

import ast
import json
import pathlib
import subprocess
import sys

import pytest

import helpers

PACKAGE = pathlib.Path(helpers.ROOT) / "diffusion_jax"
MODULES = sorted(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
                 for p in PACKAGE.rglob("*.py"))
# `python -m diffusion_jax.prepare` is a command of the runtime at the top of the package, for its short name.
ENTRY_POINTS = ("diffusion_jax.prepare",)
RUNTIME = [m for m in MODULES if m.startswith("diffusion_jax.run") or m in ENTRY_POINTS]
MATH = [m for m in MODULES if m not in RUNTIME]
HEAVY = ("orbax", "tensorflow_datasets", "grain", "optax")


def _loaded_after(module: str) -> set[str]:
  """The diffusion_jax modules and heavy libraries in sys.modules after importing `module` in a fresh process."""
  code = (f"import sys, json, importlib; importlib.import_module({module!r}); "
          f"print(json.dumps(sorted(m for m in sys.modules if m.startswith(('diffusion_jax',) + {HEAVY!r}))))")
  out = subprocess.run([sys.executable, "-c", code], cwd=helpers.ROOT, env=helpers.env(), capture_output=True,
                       text=True, timeout=120, check=True).stdout
  return set(json.loads(out.splitlines()[-1]))


def test_the_folders_hold_both_sides():
  assert {"diffusion_jax.run.train", "diffusion_jax.run.experiment", "diffusion_jax.run.data"} <= set(RUNTIME)
  assert {"diffusion_jax.schedules", "diffusion_jax.sampling", "diffusion_jax.solvers"} <= set(MATH)


@pytest.mark.parametrize("name", MATH)
def test_the_math_imports_nothing_of_the_runtime(name):
  loaded = _loaded_after(name)
  assert not loaded & set(RUNTIME)
  assert not any(m.startswith(HEAVY) for m in loaded)


@pytest.mark.parametrize("name", ["diffusion_jax.run.modes", "diffusion_jax.run.quality", "diffusion_jax.run.trained"])
def test_sample_eval_and_loading_never_import_the_training_loop(name):
  loaded = _loaded_after(name)
  assert "diffusion_jax.run.data" in loaded
  assert not loaded & {"diffusion_jax.run.train", "diffusion_jax.run.step"}


def test_every_folder_is_a_package_that_an_install_ships():
  folders = {p.parent for p in PACKAGE.rglob("*.py")}
  assert not {str(f) for f in folders if not (f / "__init__.py").exists()}


def test_no_module_is_longer_than_400_lines():
  lengths = {str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
  assert not {p: n for p, n in lengths.items() if n > 400}


def _private_imports(path: pathlib.Path) -> list[str]:
  """`module._name` attributes and `from module import _name` of diffusion_jax modules in one test file."""
  tree = ast.parse(path.read_text())
  ours = {alias.asname or alias.name.split(".")[-1] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
          and (node.module or "").startswith("diffusion_jax") for alias in node.names}
  found = [f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
           and (node.module or "").startswith("diffusion_jax") for alias in node.names if alias.name.startswith("_")]
  found += [f"{node.value.id}.{node.attr}" for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id in ours and node.attr.startswith("_")]
  return found


def test_no_test_uses_a_private_name_of_the_library():
  tests = pathlib.Path(helpers.ROOT) / "tests"
  used = {p.name: _private_imports(p) for p in tests.glob("*.py")}
  assert not {name: found for name, found in used.items() if found}


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

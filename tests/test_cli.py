"""main.py as a user meets it: a fresh machine's first run, its log, progress lines, --help."""

import re
import subprocess

import pytest

import helpers

# absl's warning/error prefixes (W1123 12:00:00.000 ...) and Python's own.
WARNING_LINE = re.compile(r"^(W|E)\d{4} |^WARNING|Warning:", re.M)


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory):
  """A tiny training run on an empty TFDS data_dir (digits prepared on the way), then sample and eval."""
  root = tmp_path_factory.mktemp("fresh")
  data_dir, workdir = str(root / "tfds"), str(root / "workdir")
  flag = f"--config.data.data_dir={data_dir}"
  return {mode: helpers.run_main("tiny.py", workdir, flag, mode=mode) for mode in ("train", "sample", "eval")}


@pytest.mark.parametrize("mode", ["train", "sample", "eval"])
def test_log_is_plain_lines_without_warnings(fresh_run, mode):
  out = fresh_run[mode].stdout + fresh_run[mode].stderr
  assert "\r" not in out and "\x1b" not in out, "terminal control characters in a redirected log"
  assert not WARNING_LINE.search(out), WARNING_LINE.search(out).group(0) + out[-3000:]


def test_first_run_prepares_digits_and_reports_progress(fresh_run):
  out = fresh_run["train"].stderr
  assert "Prepared the built-in digits dataset" in out
  assert "Compiling the train step" in out
  assert re.search(r"step 8/8 .* ETA 0:00:00", out)
  assert re.search(r"preview samples at step 8 \(8 samples, 50 steps each\): 50/50 steps \(100%\), .* ETA 0:00:00", out)
  assert "points/s" not in out and "images/s" in out


def test_sample_and_eval_report_progress_inside_the_compiled_loops(fresh_run):
  assert re.search(r"sampling \(8 samples, 50 steps each\): 50/50 steps \(100%\)", fresh_run["sample"].stderr)
  assert re.search(r"eval bits/dim on test: 50/50 timesteps of a batch \(100%\)", fresh_run["eval"].stderr)


def test_help_explains_config_overrides():
  proc = subprocess.run(helpers.main_command("tiny.py", "unused") + ["--help"], env=helpers.env(),
                        cwd=helpers.ROOT, capture_output=True, text=True, timeout=120)
  assert "--config.KEY=VALUE" in proc.stdout and "configs/default.py" in proc.stdout
  assert "--[no]traceback" in proc.stdout


def test_traceback_flag_shows_the_stack():
  proc = helpers.run_main("tiny.py", "unused", "--config.training.ema_decay=1.5", "--traceback", check=False)
  assert proc.returncode != 0
  assert "Traceback" in proc.stderr and "training.ema_decay = 1.5 is invalid" in proc.stderr

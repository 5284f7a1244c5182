"""main.py as a user meets it: a fresh machine's first run (README's commands), its log, progress lines, --help."""

import re
import subprocess

import pytest

import helpers

# absl's warning/error prefixes (W1123 12:00:00.000 ...) and Python's own.
WARNING_LINE = re.compile(r"^(W|E)\d{4} |^WARNING|Warning:", re.M)


@pytest.fixture(scope="module")
def fresh_run(readme_runs):
  """README's first commands (digits: train, sample, eval) on an empty TFDS data_dir, prepared on the way."""
  _, procs = readme_runs
  return dict(zip(("train", "sample", "eval"), procs))


@pytest.mark.parametrize("mode", ["train", "sample", "eval"])
def test_log_is_plain_lines_without_warnings(fresh_run, mode):
  out = fresh_run[mode].stdout + fresh_run[mode].stderr
  assert "\r" not in out and "\x1b" not in out, "terminal control characters in a redirected log"
  assert not WARNING_LINE.search(out), WARNING_LINE.search(out).group(0) + out[-3000:]


def test_first_run_prepares_digits_and_reports_progress(fresh_run):
  out = fresh_run["train"].stderr
  assert "Prepared the built-in digits dataset" in out
  assert "Compiling the train step" in out
  assert re.search(r"step 20/20 .* ETA 0:00:00", out)
  assert re.search(r"preview samples at step 20 \(\d+ samples, 50 steps each\): \d+/\d+ steps \(100%\), .* ETA 0:00:00",
                   out)
  assert "points/s" not in out and "images/s" in out


def test_sample_and_eval_report_progress_inside_the_compiled_loops(fresh_run):
  assert re.search(r"sampling \(256 samples, 50 steps each\): 200/200 steps \(100%\)", fresh_run["sample"].stderr)
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

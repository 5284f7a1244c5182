"""main.py's flags as a user meets them: --help and --traceback (the first run's log: test_readme.py)."""

import subprocess

import helpers


def test_help_explains_config_overrides():
  proc = subprocess.run(helpers.main_command("tiny.py", "unused") + ["--help"], env=helpers.env(),
                        cwd=helpers.ROOT, capture_output=True, text=True, timeout=120)
  assert "--config.KEY=VALUE" in proc.stdout and "configs/default.py" in proc.stdout
  assert "--[no]traceback" in proc.stdout


def test_traceback_flag_shows_the_stack():
  proc = helpers.run_main("tiny.py", "unused", "--config.training.ema_decay=1.5", "--traceback", check=False)
  assert proc.returncode != 0
  assert "Traceback" in proc.stderr and "training.ema_decay = 1.5 is invalid" in proc.stderr

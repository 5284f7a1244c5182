#!/usr/bin/env bash
# The accelerator check (issue 29), one command: bash benchmarks/device/check.sh [--dry-run] [check.py's flags]
#
# On the lent GPU machine (its image has JAX with CUDA, flax, optax, orbax, torch, pytest, ...) it installs the
# wheels of benchmarks/device/wheels.txt from .whl/ (bash benchmarks/device/fetch_wheels.sh fills it here; the
# device call carries it) into /tmp/site, then runs benchmarks/device/check.py, whose report lands in $OUT.
# --dry-run installs nothing and runs every stage at toy size with what this environment has (CI runs it).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ " $* " != *" --dry-run "* ]]; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "No wheels in .whl/: run bash benchmarks/device/fetch_wheels.sh here first, and carry .whl" >&2
    exit 2
  fi
  "${PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
fi
exec "${PYTHON:-python3}" benchmarks/device/check.py "$@"

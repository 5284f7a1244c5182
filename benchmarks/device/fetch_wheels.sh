#!/usr/bin/env bash
# Downloads benchmarks/device/wheels.txt into .whl/ (git-ignored) as cp312 manylinux x86-64 wheels for the GPU
# machine, which reaches no package index; a requirement published only as a source archive (promise) is built
# into a wheel here (pure Python). Fails if the folder would not fit the device call's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
platforms=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
rm -rf .whl && mkdir -p .whl
grep -v '^#' benchmarks/device/wheels.txt | grep -v '^$' | while read -r req; do
  if ! "$PYTHON" -m pip download -q --no-deps --only-binary=:all: "${platforms[@]}" -d .whl "$req" 2>/dev/null; then
    echo "$req: no wheel published; building one from its source archive"
    "$PYTHON" -m pip wheel -q --no-deps -w .whl "$req"
  fi
done
bytes=$(du -cb .whl/*.whl | tail -1 | cut -f1)
echo "$(ls .whl/*.whl | wc -l) wheels, $((bytes / 1048576)) MiB in .whl/"
if (( bytes > 60 * 1048576 )); then
  echo "Over 60 MiB: the device call carries 64 MiB with the working tree." >&2
  exit 1
fi

#!/usr/bin/env bash
# Set up the pinned test environment in .venv (reused while tests/requirements.txt is unchanged) and run the
# whole suite: `bash tests/run.sh [pytest args]`. Works on a fresh machine with Python 3.10+ and pip.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${GPEN_TEST_VENV:-.venv}
# torch and torchvision must be the registry's matching pair (a CPU-only local torch wheel has no torchvision).
torch_pair="torch==2.13.0 torchvision==0.28.0"
stamp="$venv/.gpen-test-stack"
wanted="$torch_pair $(sha256sum tests/requirements.txt | cut -c1-16)"

if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "Setting up the test environment in $venv (first run: a few minutes, about 5 GB)..."
  python3 -m venv "$venv"
  # --isolated: ignore machine-wide pip configuration, take packages from the registry as a user would.
  "$venv/bin/python" -m pip install --isolated --quiet --disable-pip-version-check $torch_pair
  "$venv/bin/python" -m pip install --isolated --quiet --disable-pip-version-check -r tests/requirements.txt
  echo "$wanted" > "$stamp"
fi

exec "$venv/bin/python" -m pytest "$@"

#!/usr/bin/env bash
# Set up the pinned test environment in .venv (reused while the pins below are unchanged) and run the whole
# suite: `bash tests/run.sh [pytest args]`. Works on a fresh machine with Python 3.10+ and pip; as root it also
# installs Debian's headless Chromium for the frontend tests.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${GPEN_TEST_VENV:-.venv}

# The ComfyUI the pack is tested in: $COMFYUI_DIR, else ../shared/comfyui beside the clone, else a pinned
# shallow clone of upstream's v0.8.0 in a cache folder of our own (made once, reused).
comfyui_tag="v0.8.0"
if [ -n "${COMFYUI_DIR:-}" ]; then
  comfyui_dir=$COMFYUI_DIR
elif [ -f ../shared/comfyui/main.py ]; then
  comfyui_dir=../shared/comfyui
else
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/comfyui-gpen-restore-tests
  comfyui_dir=$cache/ComfyUI-$comfyui_tag
  if [ ! -f "$comfyui_dir/main.py" ]; then
    echo "Cloning ComfyUI $comfyui_tag into $comfyui_dir..."
    mkdir -p "$cache"
    rm -rf "$comfyui_dir.partial"
    git clone --quiet --depth 1 --branch "$comfyui_tag" https://github.com/comfyanonymous/ComfyUI.git \
      "$comfyui_dir.partial"
    mv "$comfyui_dir.partial" "$comfyui_dir"  # only a complete clone gets the final name
  fi
fi
comfyui_dir=$(cd "$comfyui_dir" && pwd)
export COMFYUI_DIR=$comfyui_dir  # tests/comfy_host.py reads it

# ComfyUI's own requirements without its torch/torchvision/torchaudio lines: those would replace the registry
# torch pair below (and no torchaudio matches torch 2.13.0; the image nodes do not need it).
comfyui_requirements=$(grep -vE '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*([<>=!~;#].*)?$' \
  "$comfyui_dir/requirements.txt")

# torch and torchvision must be the registry's matching pair (a CPU-only local torch wheel has no torchvision).
torch_pair="torch==2.13.0 torchvision==0.28.0"
stamp="$venv/.gpen-test-stack"
wanted="$torch_pair $(cat tests/requirements.txt - <<<"$comfyui_requirements" | sha256sum | cut -c1-16)"

if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "Setting up the test environment in $venv (first run: a few minutes, about 6 GB)..."
  python3 -m venv "$venv"
  # --isolated: ignore machine-wide pip configuration, take packages from the registry as a user would.
  pip_install=("$venv/bin/python" -m pip install --isolated --quiet --disable-pip-version-check)
  "${pip_install[@]}" $torch_pair
  "${pip_install[@]}" -r tests/requirements.txt -r /dev/stdin <<<"$comfyui_requirements"
  echo "$wanted" > "$stamp"
fi

# The frontend tests drive Debian's headless Chromium (Playwright never downloads a browser of its own here).
chromium=/usr/lib/chromium/chromium-headless-shell
if [ ! -x "$chromium" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "Installing Debian's chromium-headless-shell for the frontend tests..."
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell >/dev/null
  else
    echo "warning: $chromium is missing; the frontend tests will fail (apt-get install chromium-headless-shell)" >&2
  fi
fi

exec "$venv/bin/python" -m pytest "$@"

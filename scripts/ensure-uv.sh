#!/usr/bin/env bash
# Print the path of a usable `uv`, installing it with pip when it is missing.
# Works on a fresh Debian (PEP 668 "externally managed" Python) and in a pyenv/venv.
set -euo pipefail
PY=${PYTHON:-python3}
if command -v uv >/dev/null 2>&1; then command -v uv; exit 0; fi
for cand in "$HOME/.local/bin/uv" "$(dirname "$(command -v "$PY")")/uv" .tools/bin/uv; do
  if [ -x "$cand" ]; then echo "$cand"; exit 0; fi
done
{
  "$PY" -m pip install --quiet uv \
  || "$PY" -m pip install --quiet --user uv \
  || "$PY" -m pip install --quiet --user --break-system-packages uv \
  || { "$PY" -m venv .tools && .tools/bin/pip install --quiet uv; }
} >&2
for cand in "$(command -v uv 2>/dev/null || true)" "$HOME/.local/bin/uv" "$(dirname "$(command -v "$PY")")/uv" .tools/bin/uv; do
  if [ -n "$cand" ] && [ -x "$cand" ]; then echo "$cand"; exit 0; fi
done
echo "ensure-uv: could not install uv with $PY -m pip" >&2
exit 1

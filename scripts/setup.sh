#!/usr/bin/env bash
# Set up what is missing for mss: ffmpeg (musdb/museval need the binary), a virtual environment in .venv with
# PyTorch and mss installed editable with its dev extra. Safe to re-run.
#   TORCH_SPEC       pip requirement for torch (default torch==2.13.0)
#   TORCH_INDEX_URL  index to install torch from, used as given (e.g. https://download.pytorch.org/whl/cu128 for a
#                    CUDA build on a machine without a GPU); unset, the index follows the machine (below)
#   PYTHON           interpreter used to create .venv (default python3, >= 3.10)
# Which torch build (PyPI's Linux torch is the multi-GB CUDA build):
#   TORCH_INDEX_URL set                -> TORCH_SPEC from that index
#   an NVIDIA GPU (nvidia-smi on PATH or /proc/driver/nvidia), or not Linux -> TORCH_SPEC from PyPI
#   no GPU, a wheel for TORCH_SPEC on disk (pip's find-links: pip config list) -> that wheel
#   no GPU, no such wheel              -> TORCH_SPEC from PyTorch's CPU index, https://download.pytorch.org/whl/cpu
# `scripts/setup.sh --plan` prints the torch decision (pip arguments, one a line) and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
CPU_INDEX=https://download.pytorch.org/whl/cpu

has_nvidia_gpu() {
  command -v nvidia-smi >/dev/null 2>&1 || [ -e /proc/driver/nvidia/version ]
}

# The wheel on disk that pip would install for TORCH_SPEC without an index (find-links only), or nothing.
local_torch_wheel() {
  local python=$1 report
  report=$(mktemp)
  if "$python" -m pip install -q --disable-pip-version-check --dry-run --no-index --no-deps --ignore-installed \
       --report "$report" "$TORCH_SPEC" >/dev/null 2>&1; then
    "$python" -c "import json, sys, urllib.parse, urllib.request
url = json.load(open(sys.argv[1]))['install'][0]['download_info']['url']
if url.startswith('file:'): print(urllib.request.url2pathname(urllib.parse.urlparse(url).path))" "$report"
  fi
  rm -f "$report"
}

# pip arguments that install torch, one a line
torch_args() {
  local python=$1 wheel
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    printf '%s\n' "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
  elif has_nvidia_gpu || [ "$(uname -s)" != Linux ]; then
    printf '%s\n' "$TORCH_SPEC"
  elif wheel=$(local_torch_wheel "$python") && [ -n "$wheel" ]; then
    printf '%s\n' "$wheel"
  else
    printf '%s\n' "$TORCH_SPEC" --index-url "$CPU_INDEX"
  fi
}

if [ "${1:-}" = "--plan" ]; then
  torch_args "$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo "$PY" )"
  exit 0
fi

if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing ffmpeg (Debian package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
  elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
  else
    echo "[setup] ffmpeg/ffprobe not found: install them (apt-get install ffmpeg, conda install ffmpeg," \
         "brew install ffmpeg) and re-run" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# torch first, so that resolving mss's torch requirement never pulls a CUDA build on a CPU machine
mapfile -t TORCH_ARGS < <(torch_args .venv/bin/python)
echo "[setup] torch: pip install ${TORCH_ARGS[*]}"
.venv/bin/python -m pip install -q --disable-pip-version-check "${TORCH_ARGS[@]}"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
# reference implementations, test-only parity oracles: --no-deps so they never pull torchaudio or another torch
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
  "demucs==4.0.1" "dora-search==0.1.13" "openunmix==1.3.0" "bs-roformer==0.4.1"
.venv/bin/python -c "import torch, lightning, hydra, museval, mss; print('[setup] ok: torch', torch.__version__, \
'| lightning', lightning.__version__, '| mss', mss.__version__)"

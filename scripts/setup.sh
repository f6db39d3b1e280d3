#!/usr/bin/env bash
# Set up what is missing for mss: ffmpeg (musdb/museval need the binary), a virtual environment in .venv with
# PyTorch and mss installed editable with its dev extra. Safe to re-run.
#   TORCH_SPEC  pip requirement for torch (default torch==2.13.0, the CPU build on this kind of machine;
#               on a GPU machine use e.g. TORCH_SPEC="torch==2.13.0" with the CUDA index, see README)
#   PYTHON      interpreter used to create .venv (default python3, >= 3.10)
set -euo pipefail
cd "$(dirname "$0")/.."

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

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# torch first, pinned, so that resolving mss's 'torch>=2.3' never pulls a CUDA build on a CPU machine
.venv/bin/python -m pip install -q --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
# reference implementations, test-only parity oracles: --no-deps so they never pull torchaudio or another torch
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
  "demucs==4.0.1" "dora-search==0.1.13" "openunmix==1.3.0" "bs-roformer==0.4.1"
.venv/bin/python -c "import torch, lightning, hydra, museval, mss; print('[setup] ok: torch', torch.__version__, \
'| lightning', lightning.__version__, '| mss', mss.__version__)"

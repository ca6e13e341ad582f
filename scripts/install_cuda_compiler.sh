#!/usr/bin/env bash
# Install the CUDA compiler from the package registry into a Python environment,
# at the CUDA version torch was built with, so the fused ops (ops/cuda/) can be
# built without a system CUDA toolkit.
#
# Usage: bash scripts/install_cuda_compiler.sh [PYTHON]    (default: python3 on PATH)
# Prints, as its last line of standard output, the toolkit folder to use as
# CUDA_HOME (ops/cuda_build.py also finds it there by itself); prints nothing
# on standard output when torch is a CPU-only build.
#
# The four packages must share torch's CUDA release: without nvidia-cuda-cccl
# the headers fail (nv/target missing); an nvidia-nvvm newer than nvcc emits
# PTX that nvcc's ptxas refuses ("Unsupported .version").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON_BIN="${1:-python3}"
CUDA_VERSION="$("$PYTHON_BIN" -c 'import torch; print(torch.version.cuda or "")')"
if [ -z "$CUDA_VERSION" ]; then
    echo "[cuda] torch is a CPU-only build: no CUDA compiler to install, the fused ops stay native" >&2
    exit 0
fi
if [ "${CUDA_VERSION%%.*}" -lt 13 ]; then
    # Before CUDA 13 the packages carry a -cuXX suffix and install into one folder each,
    # not into one toolkit folder that CUDA_HOME can name.
    echo "[cuda] error: torch is built with CUDA $CUDA_VERSION; the registry's compiler packages form a" \
         "toolkit folder from CUDA 13 on. Install a system CUDA $CUDA_VERSION toolkit and set CUDA_HOME" >&2
    exit 1
fi
# torch.version.cuda is major.minor (e.g. 13.0): pin every package to that release.
PIN="==${CUDA_VERSION}.*"
echo "[cuda] installing the CUDA ${CUDA_VERSION} compiler packages (nvcc, nvvm, crt, cccl ${PIN})" >&2
"$PYTHON_BIN" -m pip install --quiet \
    "nvidia-cuda-nvcc${PIN}" "nvidia-nvvm${PIN}" "nvidia-cuda-crt${PIN}" "nvidia-cuda-cccl${PIN}" >&2
HOME_DIR="$(PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON_BIN" -c 'from ops.cuda_build import pip_toolkit_home; print(pip_toolkit_home() or "")' \
    2>/dev/null || true)"
if [ -z "$HOME_DIR" ]; then
    echo "[cuda] error: the packages installed but no nvidia/cu*/bin/nvcc was found in $PYTHON_BIN's site-packages" >&2
    exit 1
fi
echo "$HOME_DIR"

#!/usr/bin/env bash
# Validate and benchmark a CUDA machine in one command (docs/gpu_check.md):
# build the fused ops and run their tests, time them against the native ops,
# time a training step and transformer inference at the released settings at
# fp32 and bf16 (and against the original code with --official PATH), train a
# few DDP iterations on every GPU when there are two or more, print one table,
# and exit non-zero on any mismatch. Without CUDA: one line, exit 0.
#
# Usage: bash scripts/gpu_check.sh [--official PATH] [more flags: python -m benchmarks.gpu_check --help]
# Sets up .venv with the test extras like scripts/test.sh (GANGEALING_VENV chooses another one).
source "$(dirname "$0")/env.sh" dev
if ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    exec python -m benchmarks.gpu_check "$@"   # says there is no GPU (or rehearses with --device cpu)
fi
# No CUDA toolkit on the machine: the compiler packages at torch's CUDA version (docs/fused_ops.md).
if ! python -c 'import sys; from ops.cuda_build import find_cuda_home; sys.exit(0 if find_cuda_home() else 1)'; then
    bash scripts/install_cuda_compiler.sh python >/dev/null \
        || echo "[gpu_check] no CUDA compiler could be installed: the cuda_tests section will fail" >&2
fi
exec python -m benchmarks.gpu_check "$@"

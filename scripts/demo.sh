#!/usr/bin/env bash
# The main job on the embedded default: set up .venv, then train on the
# synthetic world on the CPU and report PCK-Transfer. Extra arguments go to train.py.
source "$(dirname "$0")/env.sh"
exec python train.py --exp-name demo "$@"

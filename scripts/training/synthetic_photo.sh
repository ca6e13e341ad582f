#!/usr/bin/env bash
# GANgealing on the photo-like synthetic world (--synthetic_world photo: a scene in
# the camera's frame, occluders, lighting; docs/synthetic_world.md) on a CPU, with
# the hand-built generator: the demo's schedule plus a loss weighted towards where
# the object moved (--change_weighting) and mirrored samples in training (--flips),
# both chosen on validation seeds (docs/benchmarks.md).
# Prints PCK-Transfer on held-out renders next to the no-alignment baseline at the end.
# Extra arguments are passed on (later flags win), e.g. --results DIR or --seed 1:
#   bash scripts/training/synthetic_photo.sh [--results results] [more train.py flags]
cd "$(dirname "$0")/../.."
exec python train.py --exp-name synthetic_photo --synthetic_world photo --change_weighting 0.9 --flips "$@"

#!/usr/bin/env bash
# GANgealing on the photo-like synthetic world (--synthetic_world photo: a scene in
# the camera's frame, occluders, lighting; docs/synthetic_world.md) on a CPU, with
# the hand-built generator at the demo's schedule: a loss weighted towards where the
# target has the object (--change_weighting, --change_weighting_target), mirrored
# samples in training (--flips), the two similarity stages without the flow stage
# and a transformer twice the demo's width, all chosen on validation seeds
# (docs/benchmarks.md). Prints PCK-Transfer on held-out renders next to the
# no-alignment baseline at the end.
# Extra arguments are passed on (later flags win), e.g. --results DIR or --seed 1;
# twice the schedule aligns better in twice the time:
#   bash scripts/training/synthetic_photo.sh [--iter 4800 --period 4200 --anneal_psi 1200] [--results results]
cd "$(dirname "$0")/../.."
exec python train.py --exp-name synthetic_photo --synthetic_world photo --change_weighting 0.9 --flips \
    --change_weighting_target --transform similarity similarity \
    --stn_channel_multiplier 0.25 --stn_max_channels 64 "$@"

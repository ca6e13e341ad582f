"""A few DDP training iterations under torchrun, then: do the ranks hold the same weights?

    torchrun --nproc_per_node 2 -m benchmarks.rank_agreement --out result.json              # NCCL on GPUs
    torchrun --nproc_per_node 2 -m benchmarks.rank_agreement --out result.json --device cpu # gloo

Part of scripts/gpu_check.sh (docs/gpu_check.md). Every rank builds the models
as train.py does (training.building), wraps the transformer and the target
learner in DistributedDataParallel as train.py does, and runs ``--iters``
iterations of train.py's step (training.step). Each rank draws its own samples
(seed * world_size + rank), so the ranks' losses differ, but DDP averages the
gradients, so after every step all ranks must hold bit-identical weights
(transformer, its EMA copy, the target learner). Rank 0 writes ``--out`` (JSON,
atomically): per rank a checksum of every weight, the largest difference from
rank 0's weights, and the losses.
"""
import argparse
import json
import sys

import torch
from torch import nn

from options import parse_training_options
from training.building import build_models, build_optimizers, initialise_target
from training.ema import EMA_DECAY, accumulate
from training.step import step_modules, training_step
from models.perceptual import PERCEPTUAL_LOSSES
from utils.atomic_io import atomic_write
from utils.distributed import all_gather_tensor, cleanup, is_main_process, seed_everything, setup_distributed

# A small synthetic-world configuration: what is checked is the collective machinery, not speed.
DEFAULT_FLAGS = ['--generator', 'synthetic', '--gen_size', '32', '--real_size', '32', '--flow_size', '16',
                 '--stn_channel_multiplier', '0.125', '--stn_max_channels', '16', '--batch', '2', '--n_pca', '200']


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, help='JSON file rank 0 writes')
    parser.add_argument('--device', default='cuda', choices=['cuda', 'cpu'])
    parser.add_argument('--iters', type=int, default=3)
    return parser.parse_args(argv)


def flat_weights(*modules):
    """Every parameter and floating buffer of ``modules``, as one float64 vector (on their device)."""
    pieces = [t.detach().double().reshape(-1) for module in modules
              for t in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]]
    return torch.cat(pieces)


def main(argv=None):
    args = parse_args(argv)
    opt = parse_training_options(['--exp-name', 'rank_agreement', '--device', args.device, *DEFAULT_FLAGS],
                                 save=False)
    device, rank, world_size = setup_distributed(opt.device)
    seed_everything(opt.seed)
    generator, stn, t_ema, ll = build_models(opt, device)
    loss_fn = PERCEPTUAL_LOSSES.get(opt.loss_fn).build(opt).to(device)
    initialise_target(opt, generator, ll, loss_fn, device)
    t_optim, ll_optim, _, _ = build_optimizers(opt, stn, ll)
    stn_module, ll_module = stn, ll
    device_ids = [device.index] if device.type == 'cuda' else None
    if world_size > 1:
        stn = nn.parallel.DistributedDataParallel(stn, device_ids=device_ids)
        ll = nn.parallel.DistributedDataParallel(ll, device_ids=device_ids)
    accumulate(t_ema, stn_module, 0)
    stn.train()
    step_generator, step_stn, step_loss_fn = step_modules(opt, generator, stn, loss_fn)
    losses = []
    for _ in range(args.iters):
        terms = training_step(opt, step_generator, step_stn, ll, step_loss_fn, psi=0.0)
        t_optim.zero_grad(set_to_none=True)
        ll_optim.zero_grad(set_to_none=True)
        terms.total.backward()
        t_optim.step()
        ll_optim.step()
        accumulate(t_ema, stn_module, EMA_DECAY)
        losses.append(terms.total.detach().float())
    weights = flat_weights(stn_module, t_ema, ll_module)
    gathered = all_gather_tensor(weights.unsqueeze(0))  # (world_size, n)
    all_losses = all_gather_tensor(torch.stack(losses).unsqueeze(0)).cpu()
    if is_main_process():
        difference = (gathered - gathered[:1]).abs().amax(dim=1).cpu()
        result = {'world_size': world_size, 'device': device.type, 'iters': args.iters,
                  'backend': torch.distributed.get_backend() if world_size > 1 else None,
                  'weights': int(weights.numel()),
                  'checksum': [float(row.sum()) for row in gathered.cpu()],
                  'max_difference_from_rank_0': [float(d) for d in difference],
                  'losses': all_losses.tolist()}
        atomic_write(args.out, lambda f: json.dump(result, f, indent=1), mode='w')
    cleanup()


if __name__ == '__main__':
    sys.exit(main())

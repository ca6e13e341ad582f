"""What training shows and reports: periodic image grids and the final alignment score.

Training assembly: it builds on models/ and datasets/ (it finds the dataset mode by name).
"""
import json
import os

import torch
from torch.utils.data import DataLoader, Subset

from datasets.modes import DATASET_MODES
from models.gangealing import CongealedMean, congealed_mean, resize_for_stn, sample_pairs
from models.losses import cluster_assignments
from utils.atomic_io import atomic_write
from utils.distributed import is_main_process, rank_share
from utils.flow_vis import flow_to_rgb
from metrics.pck_transfer import evaluate_pck_transfer, format_pck_table
from utils.precision import autocast


class TrainingVisuals:
    """Image grids of generated and real images, logged every ``--vis_every`` iterations.

    Tags: sample, congealed_sample, target_sample, mean_congealed_sample (per
    cluster when clustering), and with real images congealed_real,
    mean_congealed_real (the average-image template) and flow_real.
    Clustering models (--num_heads K > 1) also get, as the original logs them:
    congealed_sample_assigned_head<k> (up to --n_sample generated samples the
    transformer assigns to head k, congealed by it), mean_congealed_sample is
    then each cluster's mean over its assigned samples, and
    congealed_real_head<k> (the real samples congealed by head k; real images
    have no assignment without the cluster classifier, so mean_congealed_real
    holds every head's mean over all of them).
    Every rank must call :meth:`log` (means are gathered across ranks).
    """

    def __init__(self, opt, writer, device):
        self.opt = opt
        self.writer = writer
        self.device = device
        self.stn_kwargs = {'padding_mode': opt.padding_mode}
        self.real_loader, self.real_samples = self._real_images()

    def _real_images(self):
        opt = self.opt
        dataset = DATASET_MODES.get(opt.dataset_mode).build_images(opt, 'train')
        if dataset is None or len(dataset) == 0:
            return None, None
        if opt.random_reals:
            generator = torch.Generator().manual_seed(opt.seed)
            indices = torch.randint(0, len(dataset), (opt.n_sample,), generator=generator).tolist()
        else:
            indices = range(min(opt.n_sample, len(dataset)))
        samples = torch.stack([dataset[i] for i in indices])
        # The template averages the first --n_mean images, shared out over the ranks.
        share = rank_share(range(min(opt.n_mean, len(dataset))))
        loader = DataLoader(Subset(dataset, share), batch_size=opt.vis_batch_size, num_workers=0)
        return loader, samples

    @torch.no_grad()
    def log(self, generator, t_ema, ll, loss_fn, vis_z, psi, step):
        """Log every grid at ``step``. The global RNG states are restored
        afterwards, so visuals never change the training stream (a resumed run
        continues exactly as an uninterrupted one, with or without visuals)."""
        devices = [self.device] if self.device.type == 'cuda' else []
        # At the training step's --precision: the start-up visuals alone are a few hundred generator passes.
        with torch.random.fork_rng(devices=devices), autocast(self.opt.precision, self.device):
            self._log(generator, t_ema, ll, loss_fn, vis_z, psi, step)

    def _log(self, generator, t_ema, ll, loss_fn, vis_z, psi, step):
        opt, writer = self.opt, self.writer
        self._log_generated(generator, t_ema, ll, loss_fn, vis_z, psi, step)
        if self.real_loader is None:
            return
        mean, _ = congealed_mean(t_ema, self.real_loader, self.device, **self.stn_kwargs)
        if is_main_process():
            writer.grid(mean, 'mean_congealed_real', step, scale_each=True)
            reals = self.real_samples.to(self.device)
            congealed, flow = t_ema(reals, return_flow=True, **self.stn_kwargs)
            writer.grid(congealed, 'congealed_real', step, nrow=self._nrow(congealed))
            if opt.num_heads > 1:  # image-major: (N * K) -> one grid per head
                per_head = congealed.view(-1, opt.num_heads, *congealed.shape[1:])
                for head in range(opt.num_heads):
                    writer.grid(per_head[:, head], f'congealed_real_head{head}', step)
            if 'flow' in opt.transform:
                writer.grid(flow_to_rgb(flow), 'flow_real', step, nrow=self._nrow(flow), value_range=(0, 1))
            writer.flush()

    def _nrow(self, images):
        return max(1, int((images.size(0) / max(1, self.opt.num_heads)) ** 0.5)) * self.opt.num_heads

    def _log_generated(self, generator, t_ema, ll, loss_fn, vis_z, psi, step):
        opt, writer = self.opt, self.writer
        heads = opt.num_heads
        mean = CongealedMean(heads, 3, opt.flow_size, self.device)
        # As the original: one head's congealed-sample mean averages the --n_sample shown samples;
        # with clusters, --n_mean samples are assigned to heads for the per-head means.
        n_generated = opt.n_mean if heads > 1 else opt.n_sample
        n_local = max(1, len(rank_share(range(n_generated))))
        shown = []
        assigned = [[] for _ in range(heads)]  # per head: congealed samples it was assigned (up to --n_sample)
        done = 0
        while done < n_local:
            n = min(opt.vis_batch_size, n_local - done)
            fixed = vis_z[done:done + n]  # the shown samples come from the fixed latents, the rest are fresh
            z = fixed if fixed.size(0) == n else torch.randn(n, vis_z.size(1), device=self.device)
            x, y = (images.float() for images in sample_pairs(generator, ll, psi, n, opt.flow_size, z=z,
                                                                 freeze_ll=True))
            aligned = t_ema(resize_for_stn(x, opt.flow_size), input_img_for_sampling=x,
                            output_resolution=opt.flow_size, **self.stn_kwargs)
            if heads > 1:  # keep each sample's best head (mirrors are shown unmirrored)
                distances = loss_fn(aligned, y)
                _, chosen = cluster_assignments(distances, n, heads, False)
                aligned_best = aligned.view(n, heads, *aligned.shape[1:])[torch.arange(n), chosen]
            else:
                chosen = torch.zeros(n, dtype=torch.long, device=self.device)
                aligned_best = aligned
            mean.add(aligned_best, chosen)
            if heads > 1:
                for head in range(heads):
                    room = opt.n_sample - sum(part.size(0) for part in assigned[head])
                    if room > 0:
                        assigned[head].append(aligned_best[chosen == head][:room])
            keep = max(0, min(n, opt.n_sample - done))  # the first --n_sample samples are shown
            if keep:
                shown.append((x[:keep], aligned[:keep * heads], y[:keep * heads]))
            done += n
        means, _ = mean.result()
        if is_main_process():
            x, aligned, y = (torch.cat(parts) for parts in zip(*shown))
            writer.grid(x, 'sample', step)
            writer.grid(aligned, 'congealed_sample', step, nrow=self._nrow(aligned))
            writer.grid(y, 'target_sample', step, nrow=self._nrow(y))
            writer.grid(means, 'mean_congealed_sample', step, nrow=heads, scale_each=True)
            for head, parts in enumerate(assigned):
                images = torch.cat(parts) if parts else torch.zeros(0, 3, opt.flow_size, opt.flow_size)
                if images.size(0):  # a head no sample chose has nothing to show
                    writer.grid(images, f'congealed_sample_assigned_head{head}', step)


def evaluate_alignment(opt, t_ema, writer, device, exp_dir):
    """PCK-Transfer of the EMA transformer on the dataset mode's held-out pairs
    (similarity applied ``--eval_iters`` times, mirror matching on).

    Prints a table next to the no-alignment baseline and writes
    ``<exp_dir>/pck.json``; returns the result dict, or None when the dataset
    mode has no keypoint pairs or the transformer has several cluster heads
    (PCK-Transfer is defined for one template).
    """
    if opt.num_heads > 1:
        return None
    dataset = DATASET_MODES.get(opt.dataset_mode).build_pck(opt)
    if dataset is None:
        return None
    alphas = (0.1, 0.05)
    t_ema.eval()
    result = evaluate_pck_transfer(t_ema, dataset, alphas, device, batch_size=opt.vis_batch_size,
                                   padding_mode=opt.padding_mode, flips=True, iters=opt.eval_iters)
    if is_main_process():
        print(format_pck_table(result, alphas))
        for alpha in alphas:
            writer.scalar(f'PCK/transfer@{alpha}', result['pck'][alpha], opt.iter)
            writer.scalar(f'PCK/identity_baseline@{alpha}', result['baseline'][alpha], opt.iter)
        document = {'pairs': result['pairs'], 'pck': {str(a): v for a, v in result['pck'].items()},
                    'identity_baseline': {str(a): v for a, v in result['baseline'].items()}}
        atomic_write(os.path.join(exp_dir, 'pck.json'), lambda f: json.dump(document, f, indent=2), mode='w')
    return result

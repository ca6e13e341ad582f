"""Training visuals of clustering models: per-head congealed real images and assigned samples, per-cluster means."""
import torch

from models.gangealing import resize_for_stn, sample_pairs
from models.losses import cluster_assignments
from models.perceptual import PERCEPTUAL_LOSSES
from training.building import build_models
from utils.distributed import seed_everything
from options import parse_training_options


def test_clustering_visuals_show_each_heads_images(tiny_configs, tmp_path):
    import training.report as report
    argv = tiny_configs.synthetic + tiny_configs.kmeans + [
        '--exp-name', 'vis', '--results', str(tmp_path), '--num_heads', '2', '--n_sample', '4', '--n_mean', '12',
        '--vis_batch_size', '6', '--synthetic_modes', '2',
        '--precision', 'fp32']  # the visuals are compared with float32 passes below
    opt = parse_training_options(argv, save=False)
    seed_everything(opt.seed)
    generator, _, t_ema, ll = build_models(opt, torch.device('cpu'))
    with torch.no_grad():  # make the two heads differ, and the targets too
        for p in t_ema.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        ll.coefficients[:, 0] = torch.tensor([-3.0, 3.0])
    loss_fn = PERCEPTUAL_LOSSES.get(opt.loss_fn).build(opt)
    grids = {}
    writer = type('Writer', (), {'grid': lambda self, images, name, step, **kw: grids.update({name: images}),
                                 'flush': lambda self: None})()
    visuals = report.TrainingVisuals(opt, writer, torch.device('cpu'))
    vis_z = torch.randn(opt.n_sample, generator.style_dim)
    torch.manual_seed(5)
    visuals.log(generator, t_ema, ll, loss_fn, vis_z, 0.0, 0)

    # Real images: every head's congealed copies, one grid per head, matching the combined grid.
    reals = visuals.real_samples
    with torch.no_grad():
        congealed = t_ema(reals, padding_mode=opt.padding_mode)
    for head in range(2):
        per_head = congealed.view(-1, 2, *congealed.shape[1:])[:, head]
        torch.testing.assert_close(grids[f'congealed_real_head{head}'], per_head)

    # Generated samples: the grids of a head hold only samples assigned to it, congealed by that head, and the
    # per-cluster means average exactly those assignments. Replay the draw: the shown samples are vis_z, the rest
    # fresh draws after torch.manual_seed(5) (visuals restore the RNG, so replay it the same way).
    torch.manual_seed(5)
    expected = {0: [], 1: []}
    sums, counts = torch.zeros(2, 3, opt.flow_size, opt.flow_size), torch.zeros(2)
    done = 0
    with torch.no_grad():
        while done < opt.n_mean:
            n = min(opt.vis_batch_size, opt.n_mean - done)
            fixed = vis_z[done:done + n]
            z = fixed if fixed.size(0) == n else torch.randn(n, vis_z.size(1))
            x, y = sample_pairs(generator, ll, 0.0, n, opt.flow_size, z=z, freeze_ll=True)
            aligned = t_ema(resize_for_stn(x, opt.flow_size), input_img_for_sampling=x,
                            output_resolution=opt.flow_size, padding_mode=opt.padding_mode)
            _, chosen = cluster_assignments(loss_fn(aligned, y), n, 2, False)
            best = aligned.view(n, 2, *aligned.shape[1:])[torch.arange(n), chosen]
            for head in range(2):
                expected[head].append(best[chosen == head])
                sums[head] += best[chosen == head].sum(0)
                counts[head] += (chosen == head).sum()
            done += n
    assert counts.min() > 0
    for head in range(2):
        want = torch.cat(expected[head])[:opt.n_sample]
        torch.testing.assert_close(grids[f'congealed_sample_assigned_head{head}'], want, atol=1e-4, rtol=0)
    torch.testing.assert_close(grids['mean_congealed_sample'], sums / counts.view(-1, 1, 1, 1), atol=1e-4, rtol=0)

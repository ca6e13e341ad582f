"""Compare cluster-classifier training settings on a fixed bank of labelled samples.

``train_cluster_classifier.py`` labels every batch afresh (a generator pass and
a pass of every transformer head per sample), which costs several times the
classifier's own step. To compare losses, batch sizes or lengths quickly,
this script labels a bank of generated samples once with a clustering
checkpoint's transformer (the trainer's rule and precision: the class
``mirror * K + head`` of the closest congealed output, with the distances to
every class kept), then fits the classifier (the trainer's initialisation,
Adam and one cosine cycle) to the bank and prints its agreement with the
transformer on a held-out bank every ``--eval_every`` steps:

    python -m benchmarks.studies.classifier_bank label --ckpt MODEL.pt --out bank.pt --samples 30000 --seed 100
    python -m benchmarks.studies.classifier_bank label --ckpt MODEL.pt --out held.pt --samples 2000 --seed 200
    python -m benchmarks.studies.classifier_bank fit --ckpt MODEL.pt --bank bank.pt --held_out held.pt \
        --cls_lr 0.01 --steps 6000 [--batch 10] [--targets hard|soft|modes] [--linear_logits]

``--targets soft`` trains on the softmax of the negated distances with the
median gap between a sample's best and worst distance as temperature (the
transformer's margins, not only its choice); ``--linear_logits`` drops the
leaky ReLU the released classifier applies to its logits. ``--targets modes``
teaches the synthetic world's true modes instead of the transformer's choice
(what the classifier can learn where the boundary is clean; agreement is then
with the true modes).
"""
import argparse
import time

import torch
import torch.nn.functional as F

from models.gangealing import assign_samples, resize_for_stn
from models.perceptual import PERCEPTUAL_LOSSES
from utils.atomic_io import atomic_write
from utils.precision import autocast
from utils.schedules import DecayingCosineAnnealingWarmRestarts


def load(ckpt, cls_lr=0.001):
    """The trainer's frozen models, classifier, optimiser and loss for a checkpoint."""
    import train_cluster_classifier

    opt, path, state = train_cluster_classifier.parse_options(
        ['--ckpt', ckpt, '--exp-name', 'classifier_bank', '--cls_lr', str(cls_lr)])
    device = torch.device('cpu')
    generator, t_ema, ll, classifier, cls_optim, _, _ = train_cluster_classifier.build_models(
        opt, state, path, device)
    loss_fn = PERCEPTUAL_LOSSES.get(opt.loss_fn).build(opt).to(device)
    return opt, generator, t_ema, ll, classifier, cls_optim, loss_fn


@torch.no_grad()
def label(args):
    opt, generator, t_ema, ll, _, _, loss_fn = load(args.ckpt)
    torch.manual_seed(args.seed)
    inputs, labels, distances, modes = [], [], [], []
    for start in range(0, args.samples, args.chunk):
        n = min(args.chunk, args.samples - start)
        z = torch.randn(n, generator.style_dim)  # as assign_samples would draw it
        with autocast(opt.precision, torch.device('cpu')):  # the trainer labels its batches at --precision
            x, target, dist = assign_samples(generator, t_ema, ll, loss_fn, n, opt.flow_size, opt.num_heads,
                                             opt.flips, opt.sample_from_full_res, z=z, padding_mode=opt.padding_mode)
        if hasattr(generator, 'true_modes'):  # the synthetic world knows each sample's true mode
            modes.append(generator.true_modes(z))
        inputs.append(resize_for_stn(x.float(), opt.flow_size).half())  # what the classifier sees
        labels.append(target)
        distances.append(dist.float())
    bank = {'inputs': torch.cat(inputs), 'labels': torch.cat(labels), 'distances': torch.cat(distances)}
    if modes:
        bank['modes'] = torch.cat(modes)
    atomic_write(args.out, lambda f: torch.save(bank, f))
    print(f"{args.samples} samples labelled; class counts {torch.bincount(bank['labels']).tolist()}")


def agreement(classifier, bank, key, precision):
    classifier.eval()
    with torch.no_grad(), autocast(precision, torch.device('cpu')):
        predicted = torch.cat([classifier(chunk.float()).float().argmax(1) for chunk in bank['inputs'].split(200)])
    classifier.train()
    return float((predicted == bank[key]).float().mean())


def fit(args):
    torch.manual_seed(args.seed)
    opt, _, _, _, classifier, cls_optim, _ = load(args.ckpt, args.cls_lr)
    if args.linear_logits:
        classifier.to_logits.activation = None
    sched = DecayingCosineAnnealingWarmRestarts(cls_optim, T_0=1, T_mult=1, decay=1)
    bank = torch.load(args.bank, weights_only=True)
    held_out = torch.load(args.held_out, weights_only=True)
    key = 'modes' if args.targets == 'modes' else 'labels'
    if key not in bank or key not in held_out:
        raise SystemExit(f'error: the banks hold no {key} (true modes are known for the synthetic world only)')
    inputs, labels, distances = bank['inputs'], bank[key], bank['distances']
    gaps = distances.max(1).values - distances.min(1).values
    temperature = gaps.median()
    print(f'{labels.numel()} training samples, {held_out["labels"].numel()} held out; median distance gap '
          f'{float(temperature):.4f}')
    start = time.time()
    for step in range(1, args.steps + 1):
        batch = torch.randint(labels.numel(), (args.batch,))
        with autocast(opt.precision, torch.device('cpu')):
            logits = classifier(inputs[batch].float()).float()
        if args.targets == 'soft':
            loss = F.cross_entropy(logits, F.softmax(-distances[batch] / temperature, dim=1))
        else:
            loss = F.cross_entropy(logits, labels[batch])
        cls_optim.zero_grad(set_to_none=True)
        loss.backward()
        cls_optim.step()
        sched.step(step / args.steps)
        if step % args.eval_every == 0 or step == args.steps:
            print(f'step {step}: held-out agreement {agreement(classifier, held_out, key, opt.precision):.3f} '
                  f'({time.time() - start:.0f} s)', flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)
    make = commands.add_parser('label', help='label generated samples with the transformer')
    make.add_argument('--ckpt', required=True, help='a clustering checkpoint of train.py')
    make.add_argument('--out', required=True)
    make.add_argument('--samples', type=int, default=30000)
    make.add_argument('--seed', type=int, default=100)
    make.add_argument('--chunk', type=int, default=50)
    train = commands.add_parser('fit', help='fit the classifier to a bank')
    train.add_argument('--ckpt', required=True, help='the checkpoint the bank was labelled with')
    train.add_argument('--bank', required=True)
    train.add_argument('--held_out', required=True)
    train.add_argument('--cls_lr', type=float, default=0.01)
    train.add_argument('--steps', type=int, default=6000)
    train.add_argument('--batch', type=int, default=10)
    train.add_argument('--targets', choices=('hard', 'soft', 'modes'), default='hard')
    train.add_argument('--linear_logits', action='store_true')
    train.add_argument('--eval_every', type=int, default=1000)
    train.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    {'label': label, 'fit': fit}[args.command](args)


if __name__ == '__main__':
    main()

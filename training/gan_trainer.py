"""What train_stylegan2.py is made of: data, models, optimisers, one training iteration, checkpoints.

Lazy regularisation (Karras et al. 2020): R1 runs every ``d_reg_every``
iterations and path length every ``g_reg_every``, each weighted by its
interval; Adam's learning rate and betas are scaled by every/(every + 1) so
the effective step matches regularising every iteration. g_ema follows the
generator with decay 0.5 ** (32 / 10000) per iteration (a half-life of 10k
images at batch 32).
"""
import argparse
import copy
import os

import torch
from PIL import Image
from torch import optim
from torch.utils.data import DataLoader, Dataset

from datasets.image_folder import ImageFolderDataset, find_images
from datasets.lmdb_dataset import MultiResolutionDataset, is_lmdb_folder
from models.discriminator import Discriminator
from models.gan_losses import d_logistic_loss, g_nonsaturating_loss, path_length_penalty, r1_penalty
from models.stylegan2 import Generator
from training.ema import accumulate
from training.state import CHECKPOINT_FORMAT_VERSION, with_rng_states
from utils.diff_augment import AdaptiveAugment, augment
from utils.distributed import all_gather_tensor, get_rank
from utils.errors import DatasetError, UserError, WeightsMismatchError

# Options naming places on the training machine, cleared in an exported generator.
EXPORT_DROPPED = ('real_data_path', 'results', 'ckpt')
# Keys of rosinality's checkpoints; ours add the rest of the training state.
ROSINALITY_KEYS = ('g', 'd', 'g_ema', 'g_optim', 'd_optim', 'args')


# ---- data ---------------------------------------------------------------------------------

def training_images(path, size):
    """The training images at ``size``: an LMDB folder (it must hold that resolution) or a
    folder of image files, each at least ``size`` pixels on its shorter side.

    Returns a Dataset of (3, size, size) float tensors in [-1, 1].
    """
    if is_lmdb_folder(path):
        dataset = MultiResolutionDataset(path, size)
        if len(dataset) == 0:
            raise DatasetError(f"dataset '{path}' holds no images")
        first = dataset[0]
        if tuple(first.shape[-2:]) != (size, size):
            raise DatasetError(f"dataset '{path}' stores {tuple(first.shape[-2:])} images under resolution "
                               f'{size}; prepare it again with prepare_data.py --size {size}')
        return dataset
    if not os.path.isdir(path):
        raise DatasetError(f"'{path}' is neither an LMDB made by prepare_data.py nor a folder of images")
    files = find_images(path)
    small = []
    for name in files:
        try:
            with Image.open(name) as image:  # reads the header only
                if min(image.size) < size:
                    small.append((name, image.size))
        except OSError as e:
            raise DatasetError(f"could not read image '{name}' ({e}); remove or replace it") from None
    if small:
        name, (w, h) = small[0]
        raise DatasetError(f'{len(small)} of {len(files)} images in {path} are smaller than --size {size} '
                           f'(e.g. {name}: {w} x {h}); upscaled images would teach the generator blur: use a '
                           f'smaller --size or remove them')
    return ImageFolderDataset(path, size)


class IterationBatches(Dataset):
    """Item i: the real batch of iteration i, (batch, 3, S, S), drawn with replacement.

    The indices come from a generator seeded by (seed, rank, iteration), so a
    resumed run sees exactly the batches the uninterrupted one would have, and
    every rank sees different ones.
    """

    def __init__(self, dataset, batch, seed, rank):
        self.dataset, self.batch, self.seed, self.rank = dataset, batch, seed, rank

    def __len__(self):
        return 1 << 62

    def __getitem__(self, iteration):
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.rank) * 10_000_019 + int(iteration))
        indices = torch.randint(len(self.dataset), (self.batch,), generator=g)
        images = torch.stack([self.dataset[int(i)] for i in indices])
        flip = torch.rand(self.batch, generator=g) < 0.5  # the horizontal flips of rosinality's loader
        return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)


def batch_loader(dataset, opt, start_iter):
    """Real batches of iterations start_iter + 1 .. opt.iter, in order."""
    source = IterationBatches(dataset, opt.batch, opt.seed, get_rank())
    return DataLoader(source, batch_size=None, sampler=range(start_iter + 1, opt.iter + 1),
                      num_workers=opt.num_workers, persistent_workers=False,
                      pin_memory=torch.cuda.is_available() and opt.device != 'cpu',
                      # Its own generator: starting the iterator draws a seed, which must not
                      # come from the training RNG (a resumed run starts it at another point).
                      generator=torch.Generator().manual_seed(opt.seed))


# ---- models and optimisers ------------------------------------------------------------------

def build_networks(opt, device):
    """(generator, discriminator, g_ema) on ``device``; g_ema starts as a copy and never trains."""
    generator = Generator(opt.size, opt.latent, opt.n_mlp, channel_multiplier=opt.channel_multiplier,
                          num_fp16_res=opt.num_fp16_res, channel_max=opt.channel_max).to(device)
    discriminator = Discriminator(opt.size, channel_multiplier=opt.channel_multiplier,
                                  channel_max=opt.channel_max).to(device)
    g_ema = copy.deepcopy(generator).eval().requires_grad_(False)
    return generator, discriminator, g_ema


def lazy_adam(module, lr, every):
    """Adam with lr and betas (0, 0.99) scaled for regularisation every ``every`` iterations."""
    ratio = every / (every + 1)
    return optim.Adam(module.parameters(), lr=lr * ratio, betas=(0 ** ratio, 0.99 ** ratio))


@torch.no_grad()
def requires_grad(module, flag):
    for p in module.parameters():
        p.requires_grad_(flag)


def mixing_latents(batch, latent_dim, prob, device):
    """One z (batch, latent_dim) or, with probability ``prob``, two (style mixing)."""
    if prob > 0 and torch.rand(()).item() < prob:
        return list(torch.randn(2, batch, latent_dim, device=device).unbind(0))
    return [torch.randn(batch, latent_dim, device=device)]


# ---- one iteration ----------------------------------------------------------------------------

class Networks:
    """The modules of a run: ``g``/``d`` may be DDP wrappers of ``g_module``/``d_module``."""

    def __init__(self, g, d, g_module, d_module, g_ema, g_optim, d_optim):
        self.g, self.d, self.g_module, self.d_module = g, d, g_module, d_module
        self.g_ema, self.g_optim, self.d_optim = g_ema, g_optim, d_optim


class RunningState:
    """Training state beyond the modules: running path-length mean and the adaptive p."""

    def __init__(self, opt, device):
        self.mean_path_length = torch.zeros((), device=device)
        self.ada = AdaptiveAugment(opt.ada_target, opt.ada_length, opt.ada_every, p=opt.augment_p) \
            if opt.augment else None

    @property
    def p(self):
        return self.ada.p if self.ada is not None else 0.0

    def adaptive(self, opt):
        return opt.augment and opt.augment_p == 0


def train_iteration(opt, nets, state, real, iteration):
    """Discriminator step (+ R1), generator step (+ path length), EMA update.

    Args:
        real: (batch, 3, S, S) real images on the training device.
    Returns:
        dict of detached scalar tensors: d, g, r1, path, path_length, real_score,
        fake_score (only the regularisers computed this iteration are fresh;
        others hold zeros).
    """
    device = real.device
    zero = torch.zeros((), device=device)
    out = {'r1': zero, 'path': zero, 'path_length': zero}

    # Discriminator.
    requires_grad(nets.g_module, False)
    requires_grad(nets.d_module, True)
    with torch.no_grad():
        fake, _ = nets.g_module(mixing_latents(opt.batch, opt.latent, opt.mixing, device))
    p = state.p
    fake_logits = nets.d(augment(fake, p))
    real_logits = nets.d(augment(real, p))
    d_loss = d_logistic_loss(real_logits, fake_logits)
    nets.d_optim.zero_grad(set_to_none=True)
    d_loss.backward()
    nets.d_optim.step()
    if state.adaptive(opt):
        state.ada.update(all_gather_tensor(real_logits.detach()))
    out.update(d=d_loss.detach(), real_score=real_logits.detach().mean(), fake_score=fake_logits.detach().mean())

    if opt.r1 > 0 and iteration % opt.d_reg_every == 0:
        real_in = real.detach().requires_grad_(True)
        logits = nets.d(augment(real_in, p))
        r1 = r1_penalty(logits, real_in)
        nets.d_optim.zero_grad(set_to_none=True)
        # The zero-weighted logit keeps every parameter in the graph (DDP waits for all).
        (opt.r1 / 2 * r1 * opt.d_reg_every + 0 * logits[0, 0]).backward()
        nets.d_optim.step()
        out['r1'] = r1.detach()

    # Generator.
    requires_grad(nets.g_module, True)
    requires_grad(nets.d_module, False)
    fake, _ = nets.g(mixing_latents(opt.batch, opt.latent, opt.mixing, device))
    g_loss = g_nonsaturating_loss(nets.d_module(augment(fake, p)))
    nets.g_optim.zero_grad(set_to_none=True)
    g_loss.backward()
    nets.g_optim.step()
    out['g'] = g_loss.detach()

    if opt.path_regularize > 0 and iteration % opt.g_reg_every == 0:
        path_batch = max(1, opt.batch // opt.path_batch_shrink)
        fake, latents = nets.g(mixing_latents(path_batch, opt.latent, opt.mixing, device), return_latents=True)
        penalty, state.mean_path_length, lengths = path_length_penalty(fake, latents, state.mean_path_length)
        nets.g_optim.zero_grad(set_to_none=True)
        (opt.path_regularize * opt.g_reg_every * penalty + 0 * fake[0, 0, 0, 0]).backward()
        nets.g_optim.step()
        out['path'], out['path_length'] = penalty.detach(), lengths.mean()

    accumulate(nets.g_ema, nets.g_module)
    return out


# ---- checkpoints ----------------------------------------------------------------------------

def checkpoint_content(opt, nets, state, iteration, rng_states):
    """The checkpoint dict: rosinality's keys (g, d, g_ema, g_optim, d_optim, args, ada_aug_p)
    plus iteration, running state, RNG states and the format version."""
    content = {'g': nets.g_module.state_dict(), 'd': nets.d_module.state_dict(), 'g_ema': nets.g_ema.state_dict(),
               'g_optim': nets.g_optim.state_dict(), 'd_optim': nets.d_optim.state_dict(), 'args': opt,
               'ada_aug_p': state.p, 'iteration': iteration, 'mean_path_length': state.mean_path_length.cpu(),
               'format_version': CHECKPOINT_FORMAT_VERSION}
    if state.ada is not None:
        content['ada_state'] = state.ada.state_dict()
    return with_rng_states(content, rng_states)


def check_checkpoint_architecture(ckpt, path, opt):
    """Refuse (UserError naming the flags) a checkpoint whose g or d is not of ``opt``'s architecture.

    Builds the networks on the meta device (no memory, no time) to compare shapes.
    """
    missing = [key for key in ('g', 'd', 'g_ema') if key not in ckpt]
    if missing:
        raise UserError(f'{path} is not a StyleGAN2 training checkpoint (no {", ".join(missing)}); '
                        f'train_stylegan2.py resumes from checkpoints with g, d and g_ema')
    with torch.device('meta'):
        generator, discriminator, _ = build_networks(opt, torch.device('meta'))
    try:
        generator.load_state_dict(ckpt['g'], assign=True)
        discriminator.load_state_dict(ckpt['d'], assign=True)
    except (UserError, RuntimeError) as e:
        detail = ' '.join(str(e).split())[:300]
        raise UserError(f'{path} holds a StyleGAN2 of another architecture ({detail}); resume with its '
                        f'--size, --latent, --n_mlp, --channel_multiplier and --channel_max (or leave them '
                        f'unset with --resume)') from None


def load_training_checkpoint(ckpt, path, nets, state):
    """Restore modules, optimisers and running state from ``ckpt`` (rosinality's or ours).

    Weights of another architecture raise a UserError naming the flags.
    """
    missing = [key for key in ('g', 'd', 'g_ema') if key not in ckpt]
    if missing:
        raise UserError(f'{path} is not a StyleGAN2 training checkpoint (no {", ".join(missing)}); '
                        f'train_stylegan2.py resumes from checkpoints with g, d and g_ema')
    try:
        nets.g_module.load_state_dict(ckpt['g'])
        nets.d_module.load_state_dict(ckpt['d'])
        nets.g_ema.load_state_dict(ckpt['g_ema'])
    except (WeightsMismatchError, UserError, RuntimeError) as e:
        detail = ' '.join(str(e).split())[:300]
        raise UserError(f'{path} holds a StyleGAN2 of another architecture ({detail}); resume with its '
                        f'--size, --latent, --n_mlp, --channel_multiplier and --channel_max (or leave them '
                        f'unset with --resume)') from None
    for key, optimizer in (('g_optim', nets.g_optim), ('d_optim', nets.d_optim)):
        if key in ckpt:
            try:
                optimizer.load_state_dict(ckpt[key])
            except (ValueError, KeyError) as e:
                raise UserError(f'{path}: the {key} state does not fit this model ({e})') from None
    if 'mean_path_length' in ckpt:
        state.mean_path_length = torch.as_tensor(ckpt['mean_path_length'], dtype=torch.float32).to(
            state.mean_path_length.device)
    if state.ada is not None:
        if 'ada_state' in ckpt:
            state.ada.load_state_dict(ckpt['ada_state'])
        elif 'ada_aug_p' in ckpt:
            state.ada.p = float(ckpt['ada_aug_p'])


def generator_export(ckpt, half=True):
    """The shippable part of a training checkpoint: ``g_ema`` (float16 with ``half``), ``args``
    (the architecture, for rebuilding; paths of the training machine cleared) and ``iteration``. Loads wherever a StyleGAN2 ``--ckpt`` does."""
    if 'g_ema' not in ckpt or 'args' not in ckpt:
        raise UserError('the checkpoint has no g_ema and args to export; pass a train_stylegan2.py checkpoint')
    dtype = torch.float16 if half else torch.float32
    state = {name: value.to(dtype) if value.is_floating_point() else value for name, value in ckpt['g_ema'].items()}
    # Where the run lived on its machine means nothing to the file's users.
    args = argparse.Namespace(**{k: (None if k in EXPORT_DROPPED else v) for k, v in vars(ckpt['args']).items()})
    return {'g_ema': state, 'args': args, 'iteration': ckpt.get('iteration')}

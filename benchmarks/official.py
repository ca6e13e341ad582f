"""Run the original GANgealing code beside ours, in the same process, on the same weights.

Benchmarks only (``--official PATH``, a checkout of wpeebles/gangealing). The
original's code stays where it is: it is imported from PATH, never copied.

How it is imported. Its top-level packages are called ``models``, ``utils``
and ``datasets`` like ours, so ``load_official`` imports it in a separate
module namespace: our modules of those names are taken out of
``sys.modules``, the original is imported with PATH first on ``sys.path``,
its modules are then moved into a private dict and ours put back. Objects
keep references to their own modules' globals, so both implementations run
side by side afterwards (the original imports nothing lazily on the paths the
benchmarks call).

Stand-ins, and only these:
- its StyleGAN2 ops (``fused_act``, ``upfirdn2d``) JIT-compile CUDA extensions
  at import time through ``torch.utils.cpp_extension.load``. During the import
  that function returns a stand-in object that raises when used. The original
  runs its own native PyTorch code on CPU tensors (it checks
  ``input.device.type == "cpu"`` before touching the extension), so on a CPU
  the stand-in is never called; on CUDA the extension is compiled as usual
  (the stand-in is installed only when CUDA is absent).
- its flow head moves a tensor to CUDA in its constructor (``.cuda()``);
  on a machine without CUDA, ``torch.Tensor.cuda`` returns the tensor itself
  while the original's modules are built (``_cpu_cuda_calls``).
- ``sklearn`` is only used by its PCA fitting, which the benchmarks skip (the
  PCA buffers are copied from our model); a stand-in module is inserted when
  scikit-learn is not installed.

Weights. Every module of the original gets our module's state dict (same
layout: generator, transformer, target learner), so both compute the same
function from the same random weights. The VGG16 trunk of the perceptual loss
is a random-weight file written by ``write_random_vgg16`` and read by both
(the original through its ``pretrained_weights`` argument); the LPIPS channel
weights are the ``lpips`` package's released ones, read by both.
"""
import contextlib
import importlib.machinery
import os
import sys
import types
import time
from types import SimpleNamespace

import torch

# Top-level package names the original shares with this project.
CLASHING = ('models', 'utils', 'datasets', 'applications', 'ops', 'training')


def _clashing(name):
    return name.split('.')[0] in CLASHING


class _MissingExtension:
    """Stand-in for a CUDA extension that could not be compiled: any use raises."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attribute):
        raise RuntimeError(f"the original's CUDA extension '{self._name}' was not compiled (no CUDA here); "
                           'only its native CPU code paths can run')


@contextlib.contextmanager
def _stand_ins():
    import torch.utils.cpp_extension as cpp_extension
    original_load = cpp_extension.load
    inserted = []
    if not torch.cuda.is_available():
        cpp_extension.load = lambda name, *args, **kwargs: _MissingExtension(name)
    try:
        import sklearn.decomposition  # noqa: F401
    except ImportError:
        sklearn = types.ModuleType('sklearn')
        sklearn.decomposition = types.ModuleType('sklearn.decomposition')
        # A spec, so that importers scanning sys.modules (torch._dynamo) accept the stand-ins.
        sklearn.__spec__ = importlib.machinery.ModuleSpec('sklearn', None, is_package=True)
        sklearn.decomposition.__spec__ = importlib.machinery.ModuleSpec('sklearn.decomposition', None)
        sys.modules['sklearn'] = sklearn
        sys.modules['sklearn.decomposition'] = sklearn.decomposition
        inserted = ['sklearn', 'sklearn.decomposition']
    try:
        yield
    finally:
        cpp_extension.load = original_load
        for name in inserted:
            sys.modules.pop(name, None)


@contextlib.contextmanager
def _cpu_cuda_calls():
    if torch.cuda.is_available():
        yield
        return
    original_cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original_cuda


def load_official(path):
    """Import the original's pieces the benchmarks use from the checkout at ``path``.

    Returns a SimpleNamespace: ``Generator``, ``get_stn``, ``DirectionInterpolator``,
    ``LPIPS``, ``BilinearDownsample``, ``gangealing_loss``, ``total_variation_loss``,
    ``flow_identity_loss``, ``accumulate`` and ``modules`` (its module dict).
    Raises SystemExit with one line when ``path`` is not such a checkout.
    """
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, 'models', 'stylegan2', 'networks.py')):
        raise SystemExit(f'error: {path} is not a checkout of the original GANgealing code '
                         '(no models/stylegan2/networks.py)')
    ours = {name: module for name, module in sys.modules.items() if _clashing(name)}
    for name in ours:
        del sys.modules[name]
    sys.path.insert(0, path)
    theirs = {}
    try:
        with _stand_ins():
            import models as official_models
            import models.losses.loss as official_loss
            import models.losses.lpips as official_lpips
            result = SimpleNamespace(
                Generator=official_models.Generator, get_stn=official_models.get_stn,
                DirectionInterpolator=official_models.DirectionInterpolator,
                LPIPS=official_lpips.LPIPS, BilinearDownsample=official_models.BilinearDownsample,
                gangealing_loss=official_loss.gangealing_loss,
                total_variation_loss=official_loss.total_variation_loss,
                flow_identity_loss=official_loss.flow_identity_loss,
                accumulate=official_models.accumulate)
    finally:
        sys.path.remove(path)
        for name in [name for name in sys.modules if _clashing(name)]:
            theirs[name] = sys.modules.pop(name)
        sys.modules.update(ours)
    result.modules = theirs
    return result


def write_random_vgg16(path, seed=0):
    """Write a random-weight VGG16 ``features`` state dict (torchvision numbering) to ``path``."""
    from models.perceptual._vgg import _vgg16_trunk
    torch.manual_seed(seed)
    torch.save(_vgg16_trunk().state_dict(), path)
    return path


def official_perceptual_loss(official, loss_fn, vgg_path, device):
    """The original's LPIPS module for ``loss_fn`` (lpips or vgg_ssl), its trunk read from ``vgg_path``.

    Returns a callable (a, b) -> distances, as the original's ``get_perceptual_loss``
    builds it (vgg_ssl divides by 18), without its downloads.
    """
    quiet = contextlib.redirect_stdout(open(os.devnull, 'w'))
    with quiet:
        if loss_fn == 'vgg_ssl':
            net = official.LPIPS(net='vgg', lpips=False, pnet_rand=True, pretrained_weights=vgg_path)
        elif loss_fn == 'lpips':
            net = official.LPIPS(net='vgg', pretrained=False, pnet_rand=True, pretrained_weights=vgg_path)
            from models.perceptual.lpips import lpips_linear_weights_path
            state = torch.load(lpips_linear_weights_path(), map_location='cpu', weights_only=True)
            net.load_state_dict(state, strict=False)
        else:
            raise SystemExit(f'error: the original has no --loss_fn {loss_fn} (lpips or vgg_ssl)')
    net = net.to(device).eval()
    if loss_fn == 'vgg_ssl':
        return lambda a, b: net(a, b) / 18.0
    return net


def official_models_like(official, opt, generator, stn, ll, device):
    """The original's generator, transformer (and EMA copy) and target learner with our modules' weights."""
    with _cpu_cuda_calls():
        return _official_models_like(official, opt, generator, stn, ll, device)


def _official_models_like(official, opt, generator, stn, ll, device):
    g = official.Generator(opt.gen_size, opt.dim_latent, opt.n_mlp, channel_multiplier=opt.gen_channel_multiplier)
    g.load_state_dict(generator.state_dict())
    kwargs = dict(flow_size=opt.flow_size, supersize=opt.real_size,
                  channel_multiplier=opt.stn_channel_multiplier, num_heads=opt.num_heads)
    t = official.get_stn(list(opt.transform), **kwargs)
    t.load_state_dict(_contiguous(stn.state_dict()))
    t_ema = official.get_stn(list(opt.transform), **kwargs)
    t_ema.load_state_dict(_contiguous(stn.state_dict()))
    l = official.DirectionInterpolator(pca_path=None, n_comps=opt.ndirs, inject_index=opt.inject,
                                       n_latent=g.n_latent, num_heads=opt.num_heads)
    l.load_state_dict(ll.state_dict())
    g, t, t_ema, l = g.to(device), t.to(device), t_ema.to(device), l.to(device)
    g.eval().requires_grad_(False)
    t_ema.requires_grad_(False)
    return g, t, t_ema, l


def _contiguous(state):
    # Ours may hold channels-last weights; the original's modules take plain ones.
    return {key: value.contiguous() for key, value in state.items()}


def official_training_step(official, opt, parts, psi=0.0):
    """One iteration of the original trainer's loop body (its own functions), at ``psi``.

    ``parts``: SimpleNamespace(generator, stn, t_ema, ll, loss_fn, t_optim,
    ll_optim, resize, device). Returns the total loss (a detached scalar); the
    three loss values are read with ``.item()`` as its loop does each iteration.
    """
    p = parts
    perceptual, delta_flow = official.gangealing_loss(
        p.generator, p.stn, p.ll, p.loss_fn, p.resize, psi, opt.batch, opt.dim_latent, opt.freeze_ll, p.device,
        sample_from_full_res=opt.sample_from_full_res, padding_mode=opt.padding_mode)
    zero = torch.zeros((), device=p.device)
    tv = official.total_variation_loss(delta_flow) if opt.tv_weight > 0 else zero
    identity = official.flow_identity_loss(delta_flow) if opt.flow_identity_weight > 0 else zero
    p.stn.zero_grad()
    p.ll.zero_grad()
    total = perceptual + opt.tv_weight * tv + opt.flow_identity_weight * identity
    total.backward()
    p.t_optim.step()
    if not opt.freeze_ll:
        p.ll_optim.step()
    official.accumulate(p.t_ema, p.stn, 0.5 ** (32 / (10 * 1000)))
    for value in (perceptual, tv, identity):
        value.mean().item()
    return total.detach()


def build_official_training(official, opt, generator, stn, ll, vgg_path, device):
    """Everything ``official_training_step`` needs, with our modules' weights."""
    g, t, t_ema, l = official_models_like(official, opt, generator, stn, ll, device)
    t.train()
    resize = (official.BilinearDownsample(opt.gen_size // opt.flow_size, 3).to(device)
              if opt.gen_size > opt.flow_size else torch.nn.Sequential())
    return SimpleNamespace(
        generator=g, stn=t, t_ema=t_ema, ll=l, resize=resize, device=device,
        loss_fn=official_perceptual_loss(official, opt.loss_fn, vgg_path, device),
        t_optim=torch.optim.Adam(t.parameters(), lr=opt.stn_lr, betas=(0.9, 0.999), eps=1e-8),
        ll_optim=torch.optim.Adam(l.parameters(), lr=opt.ll_lr, betas=(0.9, 0.999), eps=1e-8))


def official_startup_work(official, vgg_path, device, gen_size=64, flow_size=64, n_sample=64, inject=5):
    """Seconds the original's train.py spends, with ``--debug`` and a 64 px StyleGAN2 (channel multiplier 2)
    on one head, on its start-up work before the first iteration, run through its own functions: the
    generator, two transformers (similarity + flow, channel multiplier 0.5) and the target learner, its LPIPS,
    the 1000 W samples for the PCA, and the first generated-sample visuals (``n_sample`` pairs drawn and
    congealed, as its create_fake_visuals). Left out: process start and imports, writing files, the
    real-image visuals and the PCA fit itself (sklearn's IncrementalPCA on 1000 x 512, which may be
    missing here): a lower bound of the original's start-up."""
    sample_pairs = official.modules['models.losses.loss'].sample_gan_supervised_pairs
    start = time.perf_counter()
    with _cpu_cuda_calls():
        g = official.Generator(gen_size, 512, 8, channel_multiplier=2).to(device).eval()
        kwargs = dict(flow_size=flow_size, supersize=gen_size, channel_multiplier=0.5, num_heads=1)
        t = official.get_stn(['similarity', 'flow'], **kwargs).to(device)
        t_ema = official.get_stn(['similarity', 'flow'], **kwargs).to(device)
        official.accumulate(t_ema, t, 0)
        ll = official.DirectionInterpolator(pca_path=None, n_comps=1, inject_index=inject, n_latent=g.n_latent,
                                            num_heads=1).to(device)
        official_perceptual_loss(official, 'lpips', vgg_path, device)
        with torch.no_grad():
            g.batch_latent(1000)
        resize = (official.BilinearDownsample(gen_size // flow_size, 3).to(device) if gen_size > flow_size
                  else torch.nn.Sequential())
        with torch.inference_mode():
            z = torch.randn(n_sample, 512, device=device)
            sample, _ = sample_pairs(g, ll, lambda x: x, 1.0, n_sample, None, True, device, z=z)
            t_ema(resize(sample))
    return time.perf_counter() - start

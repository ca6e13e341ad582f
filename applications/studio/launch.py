"""Starting the edit studio: its options, checking them, loading the model and the data,
and the listening socket (``applications.edit_studio`` is the command)."""
import os
import socket

from applications.common.data import build_dataset
from applications.common.models import load_stn
from applications.common.propagation import option_problems, propagation_argparse
from applications.studio import require_studio_dependencies
from datasets.video import SQUARE_PAD_MODES
from options import parse_eval_options
from utils.argparse_tools import report_option_problems
from utils.atomic_io import check_output_folder
from utils.distributed import choose_device, launched_by_torchrun
from utils.errors import UserError

DEFAULT_PORT = 7860
DEFAULT_KEEP_WARPS = 1000  # the default --n_mean's images, ~125 MiB of warps at flow_size 128

# Evaluation flags the studio does not read (given, they are refused).
UNREAD_OPTIONS = {
    'num_pck_pairs': 'it picks keypoint pairs, which only applications.pck evaluates',
}


def studio_argparse():
    """The propagation flags (same names and meanings) plus where to serve the page."""
    parser = propagation_argparse()
    group = parser.add_argument_group('edit studio')
    group.add_argument('--host', type=str, default='127.0.0.1',
                       help='address to serve on (the page has no authentication: keep it local '
                            'unless the network is trusted)')
    group.add_argument('--port', type=int, default=DEFAULT_PORT,
                       help='port to serve on (0: any free port; the URL is printed)')
    group.add_argument('--keep_warps', type=int, default=DEFAULT_KEEP_WARPS,
                       help='keep the alignment (flip decision and warp) of the first min(--n_mean, N) images '
                            'for the session, all clusters together, so previews of them run no network pass; '
                            'the template computation yields them, a template read from a file is followed by '
                            'aligning them in the background. Memory: about 128 KiB per image for a flow_size '
                            '128 transformer (N = 1000: about 125 MiB); 0 keeps none')
    group.add_argument('--pad', type=str, default=None, choices=SQUARE_PAD_MODES,
                       help='how the frames of a video file (--real_data_path) are made square: center crop '
                            '(default) or padded with border / zero bars; the exported mp4 keeps the frame size')
    group.add_argument('--fps', type=float, default=None,
                       help='frames per second of the exported mp4: a video file keeps its own rate unless this '
                            'is given; with a folder of frames or an LMDB it makes the page offer the mp4 of its '
                            'images in order')
    # The studio always shows a template: average the first 1000 images unless told otherwise.
    parser.set_defaults(n_mean=1000, out=os.path.join('visuals', 'edit_studio'), num_workers=0)
    return parser


def studio_problems(opt):
    """Readable problems with the options (empty when fine)."""
    problems = option_problems(opt)
    if opt.n_mean == -1 and opt.average_path is None:
        problems.append('the studio needs a template: give --n_mean N (images to average) or --average_path')
    if opt.save_individual_images:
        problems.append('--save_individual_images does not apply to the studio: its export holds every '
                        'propagated image')
    if not 0 <= opt.port <= 65535:
        problems.append(f'--port must be in 0..65535 (got {opt.port})')
    if opt.keep_warps < 0:
        problems.append(f'--keep_warps must be 0 or more (got {opt.keep_warps})')
    if opt.fps is not None and not opt.fps > 0:
        problems.append(f'--fps must be positive (got {opt.fps})')
    if opt.output_resolution is not None and opt.output_resolution < 1:
        problems.append(f'--output_resolution must be at least 1 (got {opt.output_resolution})')
    return problems


def bind_socket(host, port):
    """A listening TCP socket on (host, port); UserError when the address cannot be used."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise UserError(f'cannot serve on {host}:{port} ({e.strerror or e}); choose another --port or '
                        f'--host') from None
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def page_url(sock):
    host, port = sock.getsockname()[:2]
    if ':' in host:
        host = f'[{host}]'
    return f'http://{host}:{port}/'


def open_studio_data(opt):
    """The images the studio works on: the frames of a video file (read by number, lazily), or the
    dataset of --dataset_mode. Raises UserError (e.g. a file that is not a readable video)."""
    path = opt.real_data_path
    if path and os.path.isfile(path):
        from datasets.video import IndexedVideoFrames
        return IndexedVideoFrames(path, opt.real_size, opt.pad or 'center')
    if opt.pad is not None:
        raise UserError(f"--pad applies to a video file; '{path}' is not one (drop --pad)")
    return build_dataset(opt)


def build_engine(argv=None, verbose=True):
    """Parse the options, load the transformer and the dataset -> (options, StudioEngine).

    Raises UserError (argparse problems exit 2) before anything is served.
    """
    parser = studio_argparse()
    opt = parse_eval_options(parser, argv, verbose=verbose, unread=UNREAD_OPTIONS)
    report_option_problems(parser, studio_problems(opt))
    check_output_folder(opt.out)
    require_studio_dependencies()
    from applications.studio.engine import StudioEngine

    if launched_by_torchrun():
        raise UserError('the edit studio runs in one process; start it with python -m, not torchrun')
    if opt.average_path is not None and not os.path.isfile(opt.average_path):
        raise UserError(f"average image '{opt.average_path}' does not exist; check --average_path")
    device = choose_device(opt.device)
    dataset = open_studio_data(opt)
    t = load_stn(opt, device)
    if opt.cluster is not None and not 0 <= opt.cluster < max(1, opt.num_heads):
        raise UserError(f'--cluster {opt.cluster} does not exist: this model has {opt.num_heads} clusters '
                        f'(0 to {opt.num_heads - 1})')
    os.makedirs(opt.out, exist_ok=True)
    return opt, StudioEngine(opt, t, dataset, device)

"""The flags every trainer shares, defined once: where a run lives and how it starts and restarts
(``add_experiment_flags``), where and how it runs (``add_runtime_flags``), and how often it saves,
shows and logs (``add_interval_flags``).

train.py (and train_cluster_classifier.py, which parses with train.py's tiers) and
train_stylegan2.py both call these; each trainer then sets its own defaults with
``parser.set_defaults`` (a StyleGAN2 checkpoints more often than a transformer).
"""
from utils.distributed import DEVICE_CHOICES

# Options whose command-line spelling is not '--' + their name.
FLAG_SPELLINGS = {'exp_name': '--exp-name'}


def add_experiment_flags(group, ckpt_help):
    """--exp-name, --results, --ckpt (with the trainer's ``ckpt_help``), --resume, --iter."""
    group.add_argument(FLAG_SPELLINGS['exp_name'], dest='exp_name', type=str, required=True,
                       help='name of the run; its files go to <results>/<exp-name>')
    group.add_argument('--results', type=str, default='results', help='folder holding all experiments')
    group.add_argument('--ckpt', type=str, default=None, help=ckpt_help)
    group.add_argument('--resume', action='store_true',
                       help='continue from the newest checkpoint in <results>/<exp-name>/checkpoints '
                            '(none yet: start as the other flags say, so the same command can start '
                            'and restart a job); options come from that checkpoint unless given')
    group.add_argument('--iter', type=int, default=800000, help='total training iterations')


def add_runtime_flags(group):
    """--seed, --device, --num_workers, --local_rank (training and evaluation alike)."""
    group.add_argument('--num_workers', type=int, default=2, help='data-loading worker processes per process')
    group.add_argument('--seed', type=int, default=0, help='random seed; process r of W uses seed * W + r')
    group.add_argument('--device', type=str, default='auto', choices=DEVICE_CHOICES,
                       help='auto: CUDA when available, else CPU')
    group.add_argument('--local_rank', '--local-rank', type=int, default=0,
                       help='accepted for torch.distributed.launch; the device is chosen from the '
                            'LOCAL_RANK environment variable')


def add_interval_flags(group, vis_help):
    """--vis_every (``vis_help``: what is shown), --ckpt_every, --log_every, --n_sample; defaults are the
    original GANgealing trainer's (another trainer sets its own)."""
    group.add_argument('--vis_every', type=int, default=5000, help=vis_help)
    group.add_argument('--ckpt_every', type=int, default=50000, help='iterations between checkpoints')
    group.add_argument('--log_every', type=int, default=25, help='iterations between TensorBoard scalars')
    group.add_argument('--n_sample', type=int, default=64, help='images shown in the visuals')

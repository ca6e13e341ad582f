"""Every rank of a run must train with the same options: checked once, right after the process group forms.

Nodes of a multi-node job are started by separate commands (one torchrun per
node); a flag typed differently on one of them (another ``--batch`` or
``--iter``) would otherwise train something else there, until a collective
hangs or mixes mismatched tensors. ``check_ranks_agree`` compares the options
of all ranks with one collective and stops every rank with one error line that
names each differing option and the ranks holding each value.
"""
from options.run_flags import FLAG_SPELLINGS
from utils.distributed import describe_by_rank, differences_between_ranks
from utils.errors import UserError

# Options that describe one process or the files one node reads, not what is
# trained: the device and data-loading workers of each process, and input
# paths that each node may hold its own copy of (a dataset copied to local
# disk). The checkpoint a run starts from is compared (--ckpt): a node that
# cannot see the shared results folder would start from another point.
PER_PROCESS_OPTIONS = ('device', 'local_rank', 'num_workers', 'real_data_path', 'perceptual_weights')


def check_ranks_agree(opt, **more):
    """Stop every rank when the ranks' options differ; return quietly when they agree (or in one process).

    Args:
        opt: this rank's parsed options (argparse.Namespace).
        more: further named values every rank must share, e.g. the checkpoint a
            program resumes from when its options do not hold it.
    Raises:
        UserError on every rank, naming the options that differ and which ranks
        hold which value. All ranks must call it at the same point.
    """
    values = {name: value for name, value in vars(opt).items() if name not in PER_PROCESS_OPTIONS}
    values.update(more)
    differing = differences_between_ranks(values)
    if not differing:
        return
    details = '; '.join(f'{FLAG_SPELLINGS.get(name, "--" + name) if name in vars(opt) else name}: '
                        f'{describe_by_rank(column)}' for name, column in differing.items())
    raise UserError(f'the ranks of this run were started with different options ({details}); start every node '
                    f'with the same flags (and the same results folder, so that --resume finds the same '
                    f'checkpoint everywhere)')

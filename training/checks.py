"""What every rank must agree on at a check: non-finite values, and whether to stop.

Ranks decide together (one collective) so that none leaves while another
waits in the next all-reduce: a non-finite value or a stop signal on any rank
stops them all at the same iteration.
"""
import torch

from utils.distributed import all_gather_tensor
from utils.errors import UserError

# Where the device runs ahead of the host (CUDA), the flags are read every this
# many iterations instead of after each one.
ASYNC_CHECK_EVERY = 10


def nonfinite_flags(loss, modules):
    """Which of (loss, gradients, weights) hold a NaN or an infinity, as a (3,) float tensor of 0/1.

    Computed on the loss's device without a host synchronisation (one fused
    max-abs per tensor list), so an asynchronous device keeps its queue full.
    """
    params = [p for module in modules for p in module.parameters()]
    grads = [p.grad for p in params if p.grad is not None]

    def any_nonfinite(tensors):
        if not tensors:
            return loss.new_zeros(())
        # max |x| is NaN or inf exactly when some element is.
        largest = torch.stack([n.to(loss.device, torch.float32) for n in torch._foreach_norm(tensors, float('inf'))])
        return (~torch.isfinite(largest)).any().float()
    return torch.stack([(~torch.isfinite(loss.detach())).float(), any_nonfinite(grads), any_nonfinite(params)])


def agree(health, signal_number, losses):
    """One collective for what every rank must know at a check.

    Args:
        health: (3,) flags of this rank (``nonfinite_flags``, accumulated since the last check).
        signal_number: the stop signal this rank received (0: none).
        losses: (K,) this rank's loss values.
    Returns:
        (health flags of any rank as a list of bools, the largest signal number
        of any rank (0: keep going), the losses averaged over ranks as floats).
    """
    local = torch.cat([health.float(), health.new_tensor([float(signal_number)]), losses.detach().float()])
    every = all_gather_tensor(local.unsqueeze(0))  # (world size, 4 + K)
    worst, mean = every.max(0).values.tolist(), every.mean(0).tolist()
    return [flag > 0 for flag in worst[:3]], int(worst[3]), mean[4:]


def nonfinite_error(bad, iteration, last_check, last_good, advice):
    """The UserError for a non-finite loss / gradients / weights found at ``iteration``.

    bad: three flags (loss, gradients, weights) as ``agree`` returns them; last_check: the last iteration
    checked before; last_good: the newest checkpoint written (or None); advice: what to try, one sentence.
    """
    what = ', '.join(name for name, flag in zip(('the loss', 'the gradients', 'the weights'), bad) if flag)
    when = f'iteration {iteration}' if last_check == iteration - 1 else f'iterations {last_check + 1}-{iteration}'
    return UserError(f'{what} became non-finite at {when}; nothing was saved for it. The last good checkpoint '
                     f'is {last_good or "(none yet)"}. {advice}')

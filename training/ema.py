"""The exponential moving average of a network's weights that both trainers keep (t_ema, g_ema)."""
import torch

# Per iteration: a half-life of 10k images at batch 32, as in StyleGAN2 and the original GANgealing recipe.
EMA_DECAY = 0.5 ** (32 / (10 * 1000))


def accumulate(ema, model, decay=EMA_DECAY):
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers are copied.

    ``ema`` and ``model`` are networks of the same architecture; decay 0 makes an exact copy.
    """
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters()):
            p_ema.lerp_(p, 1 - decay)
        for b_ema, b in zip(ema.buffers(), model.buffers()):
            b_ema.copy_(b)

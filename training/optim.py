"""Learning-rate schedule and weight averaging shared by the stages."""

from __future__ import annotations

import math


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up to `peak`, then a cosine down to a tenth of it at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def ema_update(average, model, decay: float, step: int) -> None:
    """average <- decay * average + (1 - decay) * model, with the decay ramped up over the first steps
    (an average of few early steps would otherwise be mostly the initialisation)."""
    import torch

    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for a, p in zip(average.parameters(), model.parameters(), strict=True):
            a.mul_(d).add_(p.detach(), alpha=1 - d)


def optimiser_step(optimiser, loss, params, lr: float) -> None:
    """One AdamW step of every stage: the learning rate of this step, gradients of `loss` clipped to
    norm 1 over `params`."""
    import torch

    for group in optimiser.param_groups:
        group["lr"] = lr
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimiser.step()

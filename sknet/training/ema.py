"""The decay of the weights' moving average at each update, the same number on every backend.

Both adapters average every floating tensor of the model (parameters and BN statistics)
as ``ema = ema + (w - ema) * (1 - decay)``, as timm's ModelEmaV3 (buffers included) and
mindcv's TrainStep (``network.get_parameters()``, moving statistics included) do; what
differs between the two is only the warm-up of the decay, which the recipe names.
"""
import math


def ema_decay(ema, updates):
    """The decay of update number ``updates`` (1 for the first optimizer step) under ``ema`` (EmaRecipe)."""
    if ema.warmup == "timm":
        # ModelEmaV3.get_decay(step) with update_after_step 0 and min_decay 0: the first update copies.
        t = max(0, updates - 1)
        if t == 0:
            return 0.0
        return min(ema.decay, 1.0 - (1.0 + t / ema.warmup_gamma) ** -ema.warmup_power)
    if ema.warmup == "mindcv":
        return ema.decay * (1.0 - math.exp(-updates / ema.warmup_steps))
    return float(ema.decay)

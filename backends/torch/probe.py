"""What the parity checks run on the PyTorch side; ``backends.mindspore.probe`` mirrors it.

Every function takes and returns NumPy arrays and canonical names, so that
``sknet.parity`` compares the two frameworks without importing either.
"""
import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from . import layers
from .model import SKNet
from .names import load_canonical, to_canonical

DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64}


def build(spec, state, dtype="float32"):
    """A model for ``spec`` holding the canonical ``state``, in ``dtype``."""
    model = SKNet(spec)
    load_canonical(model, state)
    return model.to(DTYPES[dtype])


def math(fast):
    """A context running the model's fast CPU paths (``fast``) or module by module.

    The module-by-module math is the model's definition; the fast paths (BN folding,
    fused oneDNN calls, NHWC, the two-branch gate rewrite) must compute the same.
    """
    plain = getattr(layers, "plain_math", None)
    return contextlib.nullcontext() if fast or plain is None else plain()


def forward(model, x, train=False):
    """(logits, canonical state after the pass): a training pass updates the BN statistics."""
    model.train(train)
    p = next(model.parameters())
    with torch.no_grad():
        out = model(torch.from_numpy(x).to(p.dtype))
    return out.numpy(), to_canonical(model)


def loss_fn(label_smoothing=0.0):
    return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=label_smoothing)


def grads(model, x, y):
    """(loss, {canonical name: d loss / d param}) of mean cross-entropy in training mode."""
    model.train()
    model.zero_grad(set_to_none=True)
    dtype = next(model.parameters()).dtype
    loss = loss_fn()(model(torch.from_numpy(x).to(dtype)), torch.from_numpy(y).long())
    loss.backward()
    return float(loss.detach()), {n: p.grad.numpy().copy() for n, p in model.named_parameters()}


def sgd(model, batches, lrs, weight_decay, momentum, nesterov, label_smoothing):
    """Train ``len(batches)`` steps of SGD; lrs[i] at step i, ``weight_decay[name]`` per tensor.

    Returns (loss before each step, canonical state after the last, {name: largest
    elementwise sum of |update| over the steps}): the scale of what each tensor summed.
    """
    model.train()
    groups = {}
    for name, p in model.named_parameters():
        groups.setdefault(weight_decay[name], []).append(p)
    opt = torch.optim.SGD([{"params": ps, "weight_decay": wd} for wd, ps in groups.items()],
                          lr=float(lrs[0]), momentum=momentum, nesterov=nesterov)
    crit = loss_fn(label_smoothing)
    dtype = next(model.parameters()).dtype
    travel = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    losses = []
    for (x, y), lr in zip(batches, lrs):
        for g in opt.param_groups:
            g["lr"] = float(lr)
        opt.zero_grad(set_to_none=True)
        loss = crit(model(torch.from_numpy(x).to(dtype)), torch.from_numpy(y).long())
        loss.backward()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        for n, p in model.named_parameters():
            travel[n] += (p.detach() - before[n]).abs()
        losses.append(float(loss.detach()))
    return np.array(losses), to_canonical(model), {n: float(t.max()) for n, t in travel.items()}


def capture(model, x, paths):
    """{module path: output} of every module in ``paths`` for one eval pass, in the order they ran."""
    model.eval()
    seen = {}
    handles = []
    for path in paths:
        module = model.get_submodule(path)

        def hook(_module, _inputs, output, path=path):
            # The next layer's in-place ReLU must not change what was recorded.
            seen[path] = output.detach().numpy().copy()

        handles.append(module.register_forward_hook(hook))
    # Module by module: a fused inference path (BN folded, residual add and ReLU in one
    # call) would skip the hooks or record a sum where a layer's own output belongs.
    try:
        with torch.no_grad(), math(fast=False):
            model(torch.from_numpy(x).to(next(model.parameters()).dtype))
    finally:
        for h in handles:
            h.remove()
    return seen

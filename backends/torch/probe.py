"""What the parity checks run on the PyTorch side; ``sknet.backends.mindspore.probe`` mirrors it.

Every function takes and returns NumPy arrays and canonical names, so that
``sknet.parity`` compares the two frameworks without importing either.
"""
import contextlib
import contextvars

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sknet.parity.pinning import Signs, pool_winners
from sknet.plan import conv_out, pool_out, pool_pads

from .fast import accelerate, is_accelerated
from .model import SKNet
from .names import load_canonical, to_canonical

DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64}
# Whether ``build`` accelerates the models it makes, for the checks run inside ``math``.
_FAST = contextvars.ContextVar("sknet_parity_torch_fast", default=False)


def build(spec, state, dtype="float32"):
    """A model for ``spec`` holding the canonical ``state``, in ``dtype``; accelerated inside ``math(True)``.

    A float64 model is the checks' stand-in for exact arithmetic: its grouped and dilated
    convs run as ``_UnfoldConv`` (``Float64Conv2d``), the same function at float64 precision.
    """
    model = SKNet(spec)
    load_canonical(model, state)
    if _FAST.get():
        accelerate(model)
    model = model.to(DTYPES[dtype])
    if dtype == "float64":
        for conv in model.modules():
            if Float64Conv2d.applies(conv):
                conv.__class__ = Float64Conv2d
    return model


class _UnfoldConv(torch.autograd.Function):
    """A grouped (or dilated) conv as im2col and one batched matmul over the groups.

    PyTorch's CPU float64 conv has no oneDNN kernel: a grouped one loops over its groups
    and a dilated one runs ``slow_conv_dilated2d``; SKNet-50's float64 training pass at
    224 px spent most of its time there. Only the input and the weight are kept for the
    backward pass, which unfolds the input again: the columns (9x the input) are never
    held across layers.
    """

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, groups)
        cols, wg = _columns(x, weight, *ctx.conv), _grouped(weight, groups)
        out = torch.matmul(wg, cols)  # (B, groups, out/groups, L)
        size = [conv_out(n, k, s, p, d)
                for n, k, s, p, d in zip(x.shape[2:], weight.shape[2:], stride, padding, dilation)]
        return out.reshape(x.shape[0], weight.shape[0], *size)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        b, o = grad.shape[:2]
        grad = grad.reshape(b, groups, o // groups, -1)
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:
            cols = _columns(x, weight, *ctx.conv)
            grad_w = torch.matmul(grad, cols.transpose(-1, -2)).sum(0).reshape(weight.shape)
            del cols
        if ctx.needs_input_grad[0]:
            grad_cols = torch.matmul(_grouped(weight, groups).transpose(-1, -2), grad).flatten(1, 2)
            grad_x = F.fold(grad_cols, x.shape[2:], weight.shape[2:], dilation, padding, stride)
        return grad_x, grad_w, None, None, None, None


def _columns(x, weight, stride, padding, dilation, groups):
    cols = F.unfold(x, weight.shape[2:], dilation, padding, stride)  # (B, C*kh*kw, L)
    return cols.view(x.shape[0], groups, -1, cols.shape[-1])


def _grouped(weight, groups):
    return weight.reshape(groups, weight.shape[0] // groups, -1)


class Float64Conv2d(nn.Conv2d):
    """``nn.Conv2d`` computed by ``_UnfoldConv``: what float64 models of the checks run."""

    @staticmethod
    def applies(conv):
        return (isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
                and (conv.groups > 1 or max(conv.dilation) > 1))

    def _conv_forward(self, x, weight, bias):
        if x.dtype != torch.float64:
            return super()._conv_forward(x, weight, bias)
        y = _UnfoldConv.apply(x, weight, self.stride, self.padding, self.dilation, self.groups)
        return y if bias is None else y + bias.view(1, -1, 1, 1)


@contextlib.contextmanager
def math(fast):
    """Build models with ``fast.accelerate``'s paths (``fast``) or the reference modules.

    The reference modules are the model's definition; the fast paths (BN folding, fused
    oneDNN calls, NHWC, the two-branch gate rewrite) must compute the same.
    """
    token = _FAST.set(bool(fast))
    try:
        yield
    finally:
        _FAST.reset(token)


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


class _PinnedReLU(nn.Module):
    """A ReLU on a recorded sign pattern: ``x`` where the reference's input was > 0, else 0.

    Equal to ReLU wherever this pass rounds an input to the same side of zero as the
    reference did; ``flips`` counts the inputs where it did not.
    """

    def __init__(self, calls):
        super().__init__()
        self.calls, self.call, self.flips = calls, 0, 0

    def forward(self, x):
        mask = torch.from_numpy(self.calls[self.call].unpack()).to(x.dtype)
        self.call += 1
        self.flips += int(((x > 0).to(x.dtype) != mask).sum())
        return x * mask


class _PinnedPool(nn.Module):
    """The stem's max-pool taking the reference's winner of every window."""

    def __init__(self, pool, calls):
        super().__init__()
        self.pool, self.calls, self.call = pool, calls, 0

    def forward(self, x):
        top, bottom, left, right = pool_pads(self.pool, *x.shape[2:])
        flat = F.pad(x, (left, right, top, bottom)).flatten(2)
        index = torch.from_numpy(self.calls[self.call])
        self.call += 1
        return flat.gather(2, index).view(*x.shape[:2], pool_out(x.shape[2], self.pool), -1)


def _relus(model):
    return [(name, module) for name, module in model.named_modules() if isinstance(module, nn.ReLU)]


@contextlib.contextmanager
def record_choices(model):
    """Yields {ReLU path: [Signs of its input], 'maxpool': [winners]}, one entry per call, filled while open."""
    choices = {}

    def hook(path, what):
        def record(_module, args):
            # A block that ``recomputed`` runs again inside the backward pass makes the same choices.
            if torch._C._current_graph_task_id() == -1:
                choices.setdefault(path, []).append(what(args[0].detach().numpy()))
        return record

    hooks = [(m, hook(p, Signs)) for p, m in _relus(model)]
    if model.spec.stem.pool is not None:
        hooks.append((model.maxpool, hook("maxpool", lambda a: pool_winners(a, model.spec.stem.pool))))
    handles = [m.register_forward_pre_hook(h) for m, h in hooks]
    try:
        yield choices
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def recomputed(model):
    """Inside, each block keeps only its input for the backward pass and runs again there.

    For a float64 gradient pass whose model is dropped afterwards: SKNet-50's activations at
    224 px, batch 8, are ~3 GB in float64, the largest allocation of a parity run; this keeps
    one block's at a time, for one more forward pass. The second run updates the BN running
    statistics again, and a block with stochastic depth would draw again, so it is for
    gradients only and leaves models with stochastic depth as they are.
    """
    from torch.utils.checkpoint import checkpoint

    blocks = [] if model.spec.block.drop_path_rate else [
        block for name in model.stage_names for block in getattr(model, name)]
    for block in blocks:
        block.forward = (lambda run: lambda x: checkpoint(run, x, use_reentrant=False))(block.forward)
    try:
        yield model
    finally:
        for block in blocks:
            del block.forward


def pin(model, choices):
    """Make ``model`` replay ``choices`` (from ``record_choices``) call by call."""
    # A ReLU that a fused fast path skipped has no choices; it stays as it is.
    for path in (p for p, _ in _relus(model) if p in choices):
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, _PinnedReLU(choices[path]))
    if "maxpool" in choices:
        model.maxpool = _PinnedPool(model.spec.stem.pool, choices["maxpool"])
    return model


def flips(model):
    """How many ReLU inputs a pinned model rounded to the other side of zero from the reference."""
    return sum(m.flips for m in model.modules() if isinstance(m, _PinnedReLU))


def sgd(model, batches, lrs, weight_decay, momentum, nesterov, label_smoothing, travel=True):
    """Train ``len(batches)`` steps of SGD; lrs[i] at step i, ``weight_decay[name]`` per tensor.

    Returns (loss before each step, canonical state after the last, {name: largest
    elementwise sum of |update| over the steps}, or None without ``travel``): the scale of
    what each tensor summed.
    """
    model.train()
    groups = {}
    for name, p in model.named_parameters():
        groups.setdefault(weight_decay[name], []).append(p)
    opt = torch.optim.SGD([{"params": ps, "weight_decay": wd} for wd, ps in groups.items()],
                          lr=float(lrs[0]), momentum=momentum, nesterov=nesterov)
    crit = loss_fn(label_smoothing)
    dtype = next(model.parameters()).dtype
    # Two more copies of the weights (four times the float32 model's size in float64).
    travel = {n: torch.zeros_like(p) for n, p in model.named_parameters()} if travel else None
    losses = []
    for (x, y), lr in zip(batches, lrs):
        for g in opt.param_groups:
            g["lr"] = float(lr)
        opt.zero_grad(set_to_none=True)
        loss = crit(model(torch.from_numpy(x).to(dtype)), torch.from_numpy(y).long())
        loss.backward()
        before = {n: p.detach().clone() for n, p in model.named_parameters()} if travel else None
        opt.step()
        for n, p in model.named_parameters() if travel else ():
            travel[n] += (p.detach() - before[n]).abs()
        del before
        losses.append(float(loss.detach()))
    scales = None if travel is None else {n: float(t.max()) for n, t in travel.items()}
    return np.array(losses), to_canonical(model), scales


def capture(model, x, paths):
    """{module path: output} of every module in ``paths`` for one eval pass, in the order they ran."""
    if is_accelerated(model):
        # The reference modules: a fused inference path (BN folded, residual add and ReLU in
        # one call) would skip the hooks or record a sum where a layer's own output belongs.
        reference = SKNet(model.spec)
        reference.load_state_dict(model.state_dict())
        model = reference.to(next(model.parameters()).dtype)
    model.eval()
    seen = {}
    handles = []
    for path in paths:
        module = model.get_submodule(path)

        def hook(_module, _inputs, output, path=path):
            # The next layer's in-place ReLU must not change what was recorded.
            seen[path] = output.detach().numpy().copy()

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.from_numpy(x).to(next(model.parameters()).dtype))
    finally:
        for h in handles:
            h.remove()
    return seen

"""What the parity checks run on the MindSpore side, mirroring ``sknet.backends.torch.probe``.

Everything here runs in whichever mode (PYNATIVE or GRAPH) the caller set with
``mindspore.set_context``, except ``capture``, whose forward hooks exist only in PYNATIVE.
Names going in and out are canonical; ``names.name_map`` translates.
"""
import contextvars
from contextlib import contextmanager

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from sknet.plan import pool_out, pool_pads

from .fast import FastOptions, accelerate, resolve_options
from .model import SKNet
from .names import load_canonical, name_map, to_canonical

DTYPES = {"float32": ms.float32, "float16": ms.float16}

# What ``build`` builds with: None for the process's own options (``fast.resolve_options``).
_OPTIONS = contextvars.ContextVar("sknet_parity_ms_options", default=None)


def build(spec, state, dtype="float32", options=None):
    """An ``SKNet`` holding the canonical ``state``, built with ``options`` (default: see ``math``)."""
    options = options or _OPTIONS.get()
    net = accelerate(load_canonical(SKNet(spec), state), resolve_options() if options is None else options)
    if dtype != "float32":
        net.to_float(DTYPES[dtype])
    return net


@contextmanager
def math(fast):
    """Nets built inside take the process's speed-ups (``fast``) or none (``FastOptions.plain()``).

    The choice is made when a cell is built (GRAPH mode freezes what ``construct`` runs),
    so build inside this context.
    """
    token = _OPTIONS.set(None if fast else FastOptions.plain())
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def forward(net, x, train=False):
    net.set_train(train)
    out = net(ms.Tensor(x))
    return out.asnumpy(), to_canonical(net)


def loss_fn(label_smoothing=0.0):
    return nn.CrossEntropyLoss(reduction="mean", label_smoothing=label_smoothing)


def _canonical_names(net):
    return {m: c for c, m in name_map(net.spec).items()}


def grads(net, x, y):
    """(loss, {canonical name: d loss / d param}) through ``nn.ForwardValueAndGrad``."""
    net.set_train(True)
    weights = ms.ParameterTuple(net.trainable_params())
    step = nn.ForwardValueAndGrad(nn.WithLossCell(net, loss_fn()), weights=weights, get_by_list=True)
    step.set_train(True)
    loss, gs = step(ms.Tensor(x), ms.Tensor(y.astype(np.int32)))
    names = _canonical_names(net)
    return float(loss.asnumpy()), {names[w.name]: g.asnumpy() for w, g in zip(weights, gs)}


class _Replay(nn.Cell):
    """Replays one recorded choice per call in PYNATIVE; GRAPH mode compiles the first one in."""

    def __init__(self, calls, decode):
        super().__init__()
        self.calls, self.call, self.decode = calls, 0, decode
        self.replay = ms.get_context("mode") == ms.PYNATIVE_MODE
        self.choice = ms.Tensor(decode(calls[0]))

    def next_choice(self):
        if self.replay:
            self.choice = ms.Tensor(self.decode(self.calls[self.call]))
            self.call += 1
        return self.choice


class _PinnedReLU(_Replay):
    """``sknet.backends.torch.probe._PinnedReLU``: ``x`` where the reference's input was > 0, else 0."""

    def __init__(self, calls):
        super().__init__(calls, lambda signs: signs.unpack(np.float32))

    def construct(self, x):
        return x * self.next_choice()


class _PinnedPool(_Replay):
    """The stem's max-pool taking the reference's winner of every window."""

    def __init__(self, pool, calls):
        super().__init__(calls, lambda winners: winners.astype(np.int32))
        self.pool = pool

    def construct(self, x):
        top, bottom, left, right = pool_pads(self.pool, x.shape[2], x.shape[3])
        flat = ops.pad(x, (left, right, top, bottom)).reshape(x.shape[0], x.shape[1], -1)
        out = ops.gather_elements(flat, 2, self.next_choice())
        return out.reshape(x.shape[0], x.shape[1], pool_out(x.shape[2], self.pool), -1)


def pin(net, choices):
    """Make ``net`` replay ``choices`` (``sknet.backends.torch.probe.record_choices``) call by call."""
    if ms.get_context("mode") != ms.PYNATIVE_MODE and any(len(v) > 1 for v in choices.values()):
        raise RuntimeError("replaying the choices of several passes needs MindSpore's PYNATIVE mode")
    parents = {name: cell for name, cell in net.cells_and_names() if not name.startswith("stages")}
    parents[""] = net
    for parent_path, parent in list(parents.items()):
        for child, cell in list(parent.name_cells().items()):
            path = f"{parent_path}.{child}" if parent_path else child
            if isinstance(cell, nn.ReLU) and path in choices:
                setattr(parent, child, _PinnedReLU(choices[path]))
    if "maxpool" in choices:
        net.maxpool = _PinnedPool(net.spec.stem.pool, choices["maxpool"])
    return net


def sgd(net, batches, lrs, weight_decay, momentum, nesterov, label_smoothing, travel=False):
    """``nn.Momentum`` with a per-step learning-rate list and per-tensor weight decay groups
    (no update sizes: PyTorch's give the scales)."""
    names = _canonical_names(net)
    groups = {}
    for p in net.trainable_params():
        groups.setdefault(weight_decay[names[p.name]], []).append(p)
    lr = ms.Tensor(np.asarray(lrs, np.float32))
    opt = nn.Momentum([{"params": ps, "weight_decay": wd} for wd, ps in groups.items()],
                      learning_rate=lr, momentum=momentum, use_nesterov=nesterov)
    step = nn.TrainOneStepCell(nn.WithLossCell(net, loss_fn(label_smoothing)), opt)
    step.set_train(True)
    losses = [float(step(ms.Tensor(x), ms.Tensor(y.astype(np.int32))).asnumpy()) for x, y in batches]
    return np.array(losses), to_canonical(net), None


def capture(net, x, paths):
    """{cell path: output} of every cell in ``paths`` for one eval pass (PYNATIVE only)."""
    if ms.get_context("mode") != ms.PYNATIVE_MODE:
        raise RuntimeError("forward hooks need MindSpore's PYNATIVE mode")
    net.set_train(False)
    cells = dict(net.cells_and_names())
    seen = {}
    handles = []
    for path in paths:
        def hook(_cell, _inputs, output, path=path):
            seen[path] = output.asnumpy()

        handles.append(cells[path].register_forward_hook(hook))
    try:
        net(ms.Tensor(x))
    finally:
        for h in handles:
            h.remove()
    return seen

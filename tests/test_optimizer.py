"""Momentum SGD means the same on both backends, Nesterov included (MindSpore 2.10's CPU
ApplyMomentum ignores use_nesterov; backends/mindspore/momentum.py writes the step)."""
import numpy as np
import pytest

STEPS = [  # (gradient, lr) per step: lr changes, as a schedule's does
    (np.array([0.5, -1.0, 0.25, 2.0], np.float32), 0.1),
    (np.array([0.1, 0.3, -0.2, -1.5], np.float32), 0.2),
    (np.array([-0.4, 0.2, 0.6, 0.3], np.float32), 0.05),
]
W0 = np.array([1.0, 2.0, 3.0, -1.0], np.float32)


def torch_sgd(torch, nesterov, weight_decay):
    w = torch.nn.Parameter(torch.tensor(W0))
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay)
    for g, lr in STEPS:
        opt.param_groups[0]["lr"] = lr
        w.grad = torch.tensor(g)
        opt.step()
    return w.detach().numpy()


def by_hand(nesterov, weight_decay):
    """torch.optim.SGD's documented update, in float64."""
    w, v = W0.astype(np.float64), np.zeros(len(W0))
    for g, lr in STEPS:
        g = g + weight_decay * w
        v = 0.9 * v + g
        w = w - lr * (g + 0.9 * v if nesterov else v)
    return w


@pytest.mark.parametrize("mode", ["pynative", "graph"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_mindspore_momentum_steps_equal_torch_sgd(torch, ms, mode, nesterov, request):
    request.getfixturevalue(mode)
    from sknet.backends.mindspore.momentum import momentum_optimizer

    w = ms.Parameter(ms.Tensor(W0), name="w")
    lrs = ms.Tensor(np.array([lr for _, lr in STEPS], np.float32))
    opt = momentum_optimizer([{"params": [w], "weight_decay": 0.01}, {"order_params": [w]}], lrs, 0.9, nesterov)
    for g, _ in STEPS:
        opt((ms.Tensor(g),))
    expected = by_hand(nesterov, 0.01)
    # float32 against float64 over 3 steps of |w| <= 3: a few ulps
    np.testing.assert_allclose(torch_sgd(torch, nesterov, 0.01), expected, rtol=0, atol=2e-6)
    np.testing.assert_allclose(w.asnumpy(), expected, rtol=0, atol=2e-6)
    assert [m.name for m in opt.moments] == ["moments.w"]  # checkpoints keep their names

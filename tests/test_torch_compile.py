"""The reference PyTorch model scripts, traces, FX-traces and compiles without a graph break,
and each form computes what eager computes (as timm's CI asks of timm's models)."""
import pytest

from conftest import images
from sknet import get_spec

MODELS = ["skresnet18", "skresnext50_32x4d"]
# A 64-px input keeps every stage (the last map is 2x2) at a fraction of 224's cost.
SIZE = 64


@pytest.fixture(scope="module", params=MODELS)
def case(request):
    torch = pytest.importorskip("torch")
    import sknet

    spec = get_spec(request.param)
    model = sknet.create_model(spec, backend="torch", seed=5).eval()
    x = torch.from_numpy(images(spec, 2, size=SIZE, seed=1))
    with torch.no_grad():
        return model, x, model(x)


def _same(out, ref):
    # Script, trace and FX run the very same kernels: bit-equal. Inductor fuses and
    # reorders: fp32 eval parity, 1e-5 of the largest logit, as across backends.
    return float((out - ref).abs().max() / ref.abs().max())


def test_torch_jit_script(case):
    import torch

    model, x, ref = case
    with torch.no_grad():
        assert _same(torch.jit.script(model)(x), ref) == 0


def test_torch_jit_trace(case):
    import torch

    model, x, ref = case
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        assert _same(traced(x), ref) == 0
        # Traced at batch 2, run at batch 3: no size was frozen into the graph.
        x3 = torch.cat([x, x[:1]])
        assert _same(traced(x3), model(x3)) == 0


def test_torch_fx_symbolic_trace(case):
    import torch

    model, x, ref = case
    gm = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert _same(gm(x), ref) == 0


def test_torch_compile_fullgraph(case):
    import torch

    model, x, ref = case
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert _same(compiled(x), ref) <= 1e-5

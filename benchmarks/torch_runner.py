"""PyTorch side of the benchmark: our backend and, when importable, timm's same-named model."""
import contextlib
import copy
import importlib.util

import numpy as np

import measure

SEED = 0
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4


def has_timm():
    return importlib.util.find_spec("timm") is not None


def set_threads(n):
    import torch

    torch.set_num_threads(n)


def roof_gflops(threads, device="cpu"):
    """{what: GFLOP/s} of dense fp32 work on ``threads`` threads (or the GPU): the roof a conv
    net can approach. A oneDNN 3x3 conv is among them because this build's GEMM (MKL) runs
    at about half of oneDNN's rate on AMD CPUs: torch.mm alone would understate the roof."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    sync = _sync(device)
    n, (batch, c, h, w) = measure.ROOF_GEMM_N, measure.ROOF_CONV_SHAPE
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    x = torch.randn(batch, c, h, w, device=device).contiguous(memory_format=torch.channels_last)
    k = torch.randn(c, c, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    return {f"torch.mm {n}^3": measure.best_rate(lambda: torch.mm(a, b), measure.ROOF_GEMM_FLOPS, sync=sync),
            f"3x3 conv {batch}x{c}x{h}x{w} NHWC": measure.best_rate(
                lambda: F.conv2d(x, k, padding=1), measure.ROOF_CONV_FLOPS, sync=sync)}


def build_ours(spec):
    import sknet.backends.torch as bt

    return bt.build(spec, seed=SEED)


def build_timm(name, spec, canonical):
    """timm's model with our weights: canonical names are timm's, so the logits must agree."""
    import timm
    import torch

    model = timm.create_model(name, pretrained=False, num_classes=spec.num_classes)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in canonical.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RuntimeError(f"timm {name}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model


def device_error(device):
    """A one-line reason ``device`` cannot run the benchmark, or None."""
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError as err:
        return f"--device {device}: {str(err).splitlines()[0]}"
    if kind not in ("cpu", "cuda"):
        return f"--device {device}: only cpu and cuda are supported"
    if kind == "cuda" and not torch.cuda.is_available():
        return f"--device {device}: this PyTorch sees no CUDA device"
    return None


def _sync(device):
    import torch

    return torch.cuda.synchronize if str(device).startswith("cuda") else None


class CudaPeak:
    """Peak CUDA memory allocated during the block above what was allocated at its start."""

    def __enter__(self):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.base = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc):
        import torch

        torch.cuda.synchronize()
        self.extra = torch.cuda.max_memory_allocated() - self.base


class TorchImpl:
    """One model prepared for inference and for training steps on a fixed batch."""

    def __init__(self, model, x, y, channels_last=False, compile=False, device="cpu", amp=None):
        import torch

        self.torch = torch
        model, x, y = model.to(device), x.to(device), y.to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        self.model, self.x, self.y = model, x, y
        self.fn = torch.compile(model) if compile else model
        self.opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM,
                                   weight_decay=WEIGHT_DECAY)
        self.sync = _sync(device)
        self.cuda = x.device.type == "cuda"
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
        self.autocast = (lambda: torch.autocast(x.device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        # fp16 gradients underflow without a loss scale; bf16 and fp32 need none.
        self.scaler = torch.amp.GradScaler(x.device.type) if amp == "fp16" else None

    def memory(self):
        """Peak memory of a phase: CUDA allocations on a GPU, the process's RSS on the CPU."""
        return CudaPeak() if self.cuda else measure.PeakRSS()

    def logits(self):
        self.model.eval()
        with self.torch.inference_mode():
            return self.fn(self.x).float().cpu().numpy()

    def infer_step(self):
        with self.torch.inference_mode(), self.autocast():
            self.fn(self.x)

    def train_step(self):
        with self.autocast():
            loss = self.torch.nn.functional.cross_entropy(self.fn(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()

    def set_task(self, task):
        self.model.train(task == "train")
        return self.train_step if task == "train" else self.infer_step


def prepare(name, spec, batch, size, reference, channels_last, compile, device="cpu", amp=None,
            compare=True):
    """{implementation label: TorchImpl}, plus the reference's eval-logit deviation from ours
    (None when not ``compare``: the memory probe wants no pass run before its own)."""
    import torch

    import sknet.backends.torch as bt

    rng = np.random.default_rng(SEED)
    x = torch.from_numpy(rng.standard_normal((batch, spec.input.in_chans, size, size), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, spec.num_classes, batch))
    ours = build_ours(spec)
    # Ours as create_model returns it, ours with fast.accelerate, and with --compile both
    # ours and timm's compiled too: every one of ours is compared with every one of theirs.
    models = {"sknet": ours, "sknet-fast": bt.accelerate(copy.deepcopy(ours))}
    if compile:
        models["sknet-compiled"] = copy.deepcopy(ours)
    if reference:
        models["timm"] = build_timm(name, spec, bt.to_canonical(ours))
        if compile:
            models["timm-compiled"] = copy.deepcopy(models["timm"])
    impls = {label: TorchImpl(model, x, y, channels_last, label.endswith("-compiled"), device, amp)
             for label, model in models.items()}
    deviation = None
    if reference and compare:
        a, b = impls["sknet"].logits(), impls["timm"].logits()
        deviation = float(np.abs(a - b).max() / np.abs(b).max())
    return impls, deviation

"""The PyTorch backend's CUDA path, checked against the CPU: run it where a GPU is at hand.

    python benchmarks/cuda_check.py [--models skresnet18 skresnext50_32x4d] [--size 224]

For each model, with one set of seeded weights: eval logits of the reference model and of
``fast.accelerate``'s on CUDA (fp32, TF32 off) against the CPU reference, TorchScript,
trace and ``torch.compile(fullgraph=True)`` on CUDA against eager on CUDA, bf16 autocast
against fp32, and one SGD step's loss and weights on CUDA against the CPU. Prints one
line per check with its relative error and exits 1 if any exceeds its tolerance.
"""
import argparse
import sys

import numpy as np

# fp32 across devices: different kernels, same sums in other orders (as across backends).
# bf16 keeps 8 mantissa bits. A training step's weights are printed, not judged: each
# device runs on its own ReLU signs (no pinning, docs/parity.md finding 8), and a flipped
# sign moves a gradient entry by its whole size (zero-initialised BN biases, whose values
# are one update, then differ by ~1e-3 even between two CPU paths).
TOL = {"fp32": 1e-5, "bf16": 5e-2, "loss": 1e-5}


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def main(argv=None):
    import torch

    import sknet

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["skresnet18", "skresnext50_32x4d"])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("cuda_check: error: this PyTorch sees no CUDA device", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | cudnn {torch.backends.cudnn.version()}")
    failed = []

    def report(name, check, err, tol=None):
        ok = tol is None or err <= tol
        verdict = "not judged" if tol is None else f"(tolerance {tol:.0e}) {'ok' if ok else 'FAILED'}"
        print(f"{name:20s} {check:28s} {err:9.2e}  {verdict}", flush=True)
        if not ok:
            failed.append((name, check))

    for name in args.models:
        spec = sknet.get_spec(name)
        rng = np.random.default_rng(0)
        x = torch.from_numpy(rng.standard_normal((args.batch, spec.input.in_chans, args.size, args.size),
                                                 dtype=np.float32))
        y = torch.from_numpy(rng.integers(0, spec.num_classes, args.batch))
        cpu = sknet.create_model(spec, backend="torch", seed=1).eval()
        with torch.no_grad():
            ref = cpu(x).numpy()
        gpu = sknet.create_model(spec, backend="torch", seed=1).cuda().eval()
        fast = sknet.create_model(spec, backend="torch", seed=1, fast=True).cuda().eval()
        xc = x.cuda()
        with torch.no_grad():
            eager = gpu(xc)
            report(name, "reference cuda vs cpu", rel(eager.cpu(), ref), TOL["fp32"])
            report(name, "fast cuda vs cpu", rel(fast(xc).cpu(), ref), TOL["fp32"])
            report(name, "script cuda vs eager", rel(torch.jit.script(gpu)(xc).cpu(), eager.cpu()), TOL["fp32"])
            report(name, "trace cuda vs eager", rel(torch.jit.trace(gpu, xc)(xc).cpu(), eager.cpu()), TOL["fp32"])
            compiled = torch.compile(gpu, fullgraph=True)
            report(name, "compile cuda vs eager", rel(compiled(xc).cpu(), eager.cpu()), TOL["fp32"])
            with torch.autocast("cuda", dtype=torch.bfloat16):
                report(name, "bf16 autocast vs fp32", rel(gpu(xc).float().cpu(), eager.cpu()), TOL["bf16"])
        # One SGD step in training mode on each device from the same weights and batch.
        losses, states = [], []
        for model, dev in ((sknet.create_model(spec, backend="torch", seed=1), "cpu"),
                           (sknet.create_model(spec, backend="torch", seed=1, fast=True).cuda(), "cuda")):
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            model.train()
            loss = torch.nn.functional.cross_entropy(model(x.to(dev)), y.to(dev))
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            states.append({k: v.detach().cpu().numpy() for k, v in model.state_dict().items()
                           if v.is_floating_point()})
        report(name, "train step loss cuda vs cpu", rel(losses[1], losses[0]), TOL["loss"])
        report(name, "train step weights", max(rel(states[1][k], states[0][k]) for k in states[0]))
    print(f"{len(failed)} failed" if failed else "all passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Logit difference between the authors' SKNet-50 (sknet50_caffe) and timm's skresnext50_32x4d
on the same weights: the only differences are the stem max-pool (Caffe: no padding, rounded up;
timm: padding 1) and BN momentum (training only). Both models get the same input tensor.

    python benchmarks/caffe_vs_timm_logits.py [--seed 0] [--batch 4]
"""
import argparse

import numpy as np
import torch

import sknet
from sknet.params import init_state, tensor_specs


def trained_like(spec, seed):
    """He-initialised convs and head; BN scale and variance in [0.5, 1.5], shift and mean ~0.1 N(0, 1)."""
    rng = np.random.default_rng(seed)
    state = init_state(spec, seed)
    bn = {n: kind == "bn" for n, _, kind, _ in tensor_specs(spec)}
    for name in state:
        if bn[name]:
            wide = name.endswith(("weight", "running_var"))
            state[name] = (rng.uniform(0.5, 1.5, state[name].shape) if wide
                           else 0.1 * rng.standard_normal(state[name].shape)).astype(np.float32)
    return state


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=4)
    a = p.parse_args()
    import sknet.backends.torch as bt
    caffe, timm = sknet.get_spec("sknet50_caffe"), sknet.get_spec("skresnext50_32x4d")
    state = trained_like(timm, a.seed)
    x = torch.from_numpy(np.random.default_rng(a.seed).standard_normal((a.batch, 3, 224, 224)).astype(np.float32))
    out = {}
    for spec in (caffe, timm):
        m = bt.load_canonical(bt.build(spec), state).eval()
        with torch.no_grad():
            out[spec.name] = m(x).numpy()
    d = np.abs(out["sknet50_caffe"] - out["skresnext50_32x4d"])
    scale = np.abs(out["skresnext50_32x4d"]).max()
    top1 = (out["sknet50_caffe"].argmax(1) == out["skresnext50_32x4d"].argmax(1)).mean()
    print(f"max |diff| {d.max():.4g}, mean |diff| {d.mean():.4g}, largest logit {scale:.4g} "
          f"(max diff / largest {d.max() / scale:.3g}), top-1 agreement {top1:.2f}")


if __name__ == "__main__":
    main()

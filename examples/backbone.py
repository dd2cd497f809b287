"""SKNet as a backbone on both backends: the feature maps of chosen stages, timm's API.

    python examples/backbone.py [--size 64]
"""
import argparse

import numpy as np

import sknet


def main(size=64):
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)

    import torch

    backbone = sknet.create_model("skresnet18", backend="torch", features_only=True, out_indices=(1, 2, 3, 4)).eval()
    with torch.no_grad():
        maps = backbone(torch.from_numpy(x))
    info = backbone.feature_info
    for m, name, ch, red in zip(maps, info.module_name(), info.channels(), info.reduction()):
        print(f"torch      {name:7s} {tuple(m.shape)}  channels {ch}, reduction {red}")

    import mindspore as ms

    cell = sknet.create_model("skresnet18", backend="mindspore", features_only=True, out_indices=(1, 2, 3, 4))
    ms_maps = cell(ms.Tensor(x))
    for m, ref, name in zip(ms_maps, maps, info.module_name()):
        err = np.abs(m.asnumpy() - ref.numpy()).max() / np.abs(ref.numpy()).max()
        print(f"mindspore  {name:7s} {tuple(m.shape)}  relative difference to torch {err:.1e}")

    # Pooled features from a classifier without its head, then a new 10-class head.
    model = sknet.create_model("skresnet18", backend="torch", num_classes=0).eval()
    print("pooled features", tuple(model(torch.from_numpy(x)).shape))
    model.reset_classifier(10)
    print("logits", tuple(model(torch.from_numpy(x)).shape))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    main(p.parse_args().size)

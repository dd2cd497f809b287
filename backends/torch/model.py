"""Build a PyTorch SKNet from a spec: stem, residual stages of SK blocks, pooled linear head."""
import math

import torch
from torch import nn

from sknet.params import init_state

from . import layers
from .layers import BasicBlock, Bottleneck, batch_norm, conv_bn_infer, drop_folded, inferring, max_pool
from .names import load_canonical


# Pixels per map at and below which a training stage runs NCHW on the CPU (see forward_features).
SMALL_MAP = 7 * 7


class SKNet(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        stem = spec.stem
        self.conv1 = nn.Conv2d(spec.input.in_chans, stem.channels, stem.kernel_size, stem.stride,
                               (stem.kernel_size - 1) // 2, bias=False)
        self.bn1 = batch_norm(stem.channels, spec.norm)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = max_pool(stem.pool)
        block = Bottleneck if spec.block.type == "bottleneck" else BasicBlock
        inplanes = stem.channels
        self.stage_names = []
        for i, (depth, planes, stride) in enumerate(
                zip(spec.stages.depths, spec.stages.channels, spec.stages.strides)):
            blocks = []
            for b in range(depth):
                blocks.append(block(spec, inplanes, planes, stride if b == 0 else 1))
                inplanes = planes * spec.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.stage_names.append(f"layer{i + 1}")
        self.num_features = inplanes
        self.drop = nn.Dropout(spec.head.dropout) if spec.head.dropout else nn.Identity()
        self.fc = nn.Linear(inplanes, spec.num_classes)

    def forward_features(self, x):
        infer = inferring(self, x)
        # oneDNN's CPU convolutions, forward and backward, run NHWC without the per-call
        # NCHW reorders (a skresnet18 training step 340 -> 303 ms, SKNet-50 1251 -> 1045 ms);
        # the parameters keep their layout, so state dicts and names do not change.
        nhwc = layers.FAST and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
        if nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        if infer:
            x = conv_bn_infer(x, self.conv1, self.bn1, True)
        else:
            x = self.act1(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        for name, stride in zip(self.stage_names, self.spec.stages.strides):
            out_pixels = math.ceil(x.shape[2] / stride) * math.ceil(x.shape[3] / stride)
            if nhwc and not infer and out_pixels <= SMALL_MAP:
                # Except where oneDNN's NHWC weight gradients lose to its NCHW ones: on the
                # smallest maps (512-channel 3x3 at 7x7: 11.6 vs 5.9 ms), training runs NCHW.
                x = x.contiguous()
            x = getattr(self, name)(x)
        return x

    def forward_head(self, x):
        return self.fc(self.drop(x.mean((2, 3))))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def train(self, mode=True):
        # Folded inference weights are keyed on weight versions already; dropping them
        # here just frees their memory while training.
        drop_folded(self)
        return super().train(mode)


def build(spec, seed=0):
    """A ``torch.nn.Module`` for ``spec``, initialised from ``sknet.params.init_state(spec, seed)``."""
    model = SKNet(spec)
    load_canonical(model, init_state(spec, seed))
    return model


def count_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

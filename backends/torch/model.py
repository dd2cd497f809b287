"""Build a PyTorch SKNet from a spec's block plan: stem, residual stages of SK blocks, pooled linear
head; or, for a backbone spec, the feature maps of its ``out_indices``."""
from typing import List

import torch
from torch import nn

from sknet.features import FeatureInfo, feature_dicts
from sknet.params import head_state, init_state
from sknet.plan import build_plan
from sknet.stochastic import DropSource
from sknet.tree import stem_parts

from .layers import BLOCKS, batch_norm, conv2d, max_pool
from .names import load_canonical


class SKNet(nn.Module):
    def __init__(self, spec, seed=0):
        super().__init__()
        self.spec, self.seed = spec, seed
        plan = build_plan(spec)
        stem = {"conv": conv2d, "bn": lambda c: batch_norm(c, spec.norm), "relu": lambda _: nn.ReLU(inplace=True),
                "pool": max_pool}
        for name, role, arg in stem_parts(plan):
            self.add_module(name, stem[role](arg))
        self.drop_source = DropSource(seed)
        # Stages are attributes layer1..layerN (timm's names, hence the checkpoints' keys);
        # forward_features runs the children listed here, in order.
        self.stage_names = [stage.name for stage in plan.stages]
        for stage in plan.stages:
            blocks = (BLOCKS[b.type](b, spec.norm, self.drop_source) for b in stage.blocks)
            self.add_module(stage.name, nn.Sequential(*blocks))
        self.num_features = plan.num_features
        self.feature_info = feature_dicts(plan)
        self.set_head(plan)

    def set_head(self, plan):
        self.num_classes, self.global_pool = plan.num_classes, plan.global_pool
        self.pooled = plan.global_pool == "avg"
        self.drop = nn.Dropout(plan.dropout) if plan.dropout else nn.Identity()
        self.fc = nn.Linear(plan.num_features, plan.num_classes) if plan.num_classes else nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool=None):
        """timm's: a new head of ``num_classes`` (0: none), pooled by ``global_pool`` ("avg" or
        "": none) or as before; its weights are the ones a fresh model of that spec gets."""
        self.spec = self.spec.replace(num_classes=num_classes, global_pool=global_pool)
        self.set_head(build_plan(self.spec))
        if num_classes:
            state = head_state(self.spec, self.seed)
            self.fc.load_state_dict({k.split(".", 1)[1]: torch.from_numpy(v) for k, v in state.items()})
        self.fc.to(self.conv1.weight).train(self.training)

    def get_classifier(self):
        return self.fc

    def forward_stem(self, x):
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    def forward_features(self, x):
        x = self.forward_stem(x)
        for name, stage in self.named_children():
            if name in self.stage_names:
                x = stage(x)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        if self.pooled:
            x = x.mean((2, 3))
        x = self.drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class SKNetFeatures(SKNet):
    """A backbone (timm's ``features_only``): the maps of the spec's ``out_indices``, in order.
    It holds the stages up to the last of them and no head."""

    def __init__(self, spec, seed=0):
        super().__init__(spec, seed)
        self.feature_info = FeatureInfo(spec)
        points = [p.module for p in build_plan(spec).features]
        self.out_names = [points[i] for i in self.feature_info.out_indices]

    def forward(self, x) -> List[torch.Tensor]:
        x = self.act1(self.bn1(self.conv1(x)))
        out: List[torch.Tensor] = [x] if "act1" in self.out_names else []
        x = self.maxpool(x)
        for name, stage in self.named_children():
            if name in self.stage_names:
                x = stage(x)
                if name in self.out_names:
                    out.append(x)
        return out


def build(spec, seed=0, fast=None):
    """A ``torch.nn.Module`` for ``spec``, initialised from ``sknet.params.init_state(spec, seed)``.

    ``fast=True`` applies ``fast.accelerate`` (same function, faster on the CPU; it no longer
    scripts or traces); None and False give the reference modules.
    """
    model = (SKNetFeatures if spec.features.only else SKNet)(spec, seed)
    load_canonical(model, init_state(spec, seed))
    if fast:
        from .fast import accelerate

        accelerate(model)
    return model


def count_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

"""Build a PyTorch SKNet from a spec's block plan: stem, residual stages of SK blocks, pooled linear head."""
from torch import nn

from sknet.params import init_state
from sknet.plan import build_plan
from sknet.tree import stem_parts

from .layers import BLOCKS, batch_norm, conv2d, max_pool
from .names import load_canonical


class SKNet(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        plan = build_plan(spec)
        stem = {"conv": conv2d, "bn": lambda c: batch_norm(c, spec.norm), "relu": lambda _: nn.ReLU(inplace=True),
                "pool": max_pool}
        for name, role, arg in stem_parts(plan):
            self.add_module(name, stem[role](arg))
        # Stages are attributes layer1..layerN (timm's names, hence the checkpoints' keys);
        # forward_features runs the children listed here, in order.
        self.stage_names = [stage.name for stage in plan.stages]
        for stage in plan.stages:
            self.add_module(stage.name, nn.Sequential(*(BLOCKS[b.type](b, spec.norm) for b in stage.blocks)))
        self.num_features = plan.num_features
        self.drop = nn.Dropout(plan.dropout) if plan.dropout else nn.Identity()
        self.fc = nn.Linear(plan.num_features, plan.num_classes)

    def forward_stem(self, x):
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    def forward_features(self, x):
        x = self.forward_stem(x)
        for name, stage in self.named_children():
            if name in self.stage_names:
                x = stage(x)
        return x

    def forward_head(self, x):
        return self.fc(self.drop(x.mean((2, 3))))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def build(spec, seed=0, fast=None):
    """A ``torch.nn.Module`` for ``spec``, initialised from ``sknet.params.init_state(spec, seed)``.

    ``fast=True`` applies ``fast.accelerate`` (same function, faster on the CPU; it no longer
    scripts or traces); None and False give the reference modules.
    """
    model = SKNet(spec)
    load_canonical(model, init_state(spec, seed))
    if fast:
        from .fast import accelerate

        accelerate(model)
    return model


def count_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

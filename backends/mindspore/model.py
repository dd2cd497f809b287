"""Build a MindSpore SKNet from its block plan, cell for cell the same tree as the PyTorch backend."""
from mindspore import nn

from sknet.params import init_state
from sknet.plan import build_plan
from sknet.tree import stem_parts

from .fast import FastOptions, accelerate, resolve_options
from .layers import BLOCKS, GlobalAvgPool, batch_norm, conv2d, max_pool
from .names import load_canonical, name_parameters


class SKNet(nn.Cell):
    """The reference network of ``spec`` (``fast.accelerate`` rewrites it in place)."""

    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        plan = build_plan(spec)
        stem = {"conv": conv2d, "bn": lambda c: batch_norm(c, spec.norm), "relu": lambda _: nn.ReLU(),
                "pool": max_pool}
        for name, role, arg in stem_parts(plan):
            self.insert_child_to_cell(name, stem[role](arg))
        for stage in plan.stages:
            setattr(self, stage.name, nn.SequentialCell([BLOCKS[b.type](b, spec.norm) for b in stage.blocks]))
        # GRAPH mode needs a CellList to loop over the stages, but a CellList renames the
        # parameters it holds ('stages.0...'): name them back after the tree they sit in.
        self.stages = nn.CellList([getattr(self, stage.name) for stage in plan.stages])
        self.num_features = plan.num_features
        self.use_dropout = plan.dropout > 0
        self.drop = nn.Dropout(p=plan.dropout) if self.use_dropout else nn.Identity()
        self.global_pool = GlobalAvgPool()
        self.fc = nn.Dense(plan.num_features, plan.num_classes)
        name_parameters(self)

    def forward_features(self, x):
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x):
        return self.fc(self.drop(self.global_pool(x)))

    def construct(self, x):
        return self.forward_head(self.forward_features(x))


def build(spec, seed=0, fast=None, options=None):
    """A ``mindspore.nn.Cell`` for ``spec``, initialised from ``sknet.params.init_state(spec, seed)``.

    Its cells take the speed-ups of ``options`` (``fast.FastOptions``); without it,
    ``fast=False`` takes none (``FastOptions.plain()``) and None or True those of
    ``fast.resolve_options()``: every one that pays on this device, what every entry point
    of this process builds with.
    """
    if options is None:
        options = FastOptions.plain() if fast is False else resolve_options()
    return accelerate(load_canonical(SKNet(spec), init_state(spec, seed)), options)


def count_trainable(net):
    return sum(int(p.size) for p in net.trainable_params())

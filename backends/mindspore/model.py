"""Build a MindSpore SKNet from its block plan, cell for cell the same tree as the PyTorch backend;
for a backbone spec, the feature maps of its ``out_indices``."""
import mindspore as ms
from mindspore import nn

from sknet.features import FeatureInfo, feature_dicts
from sknet.params import head_state, init_state
from sknet.plan import build_plan
from sknet.stochastic import DropSource
from sknet.tree import stem_parts

from .fast import FastOptions, accelerate, resolve_options
from .layers import BLOCKS, GlobalAvgPool, batch_norm, conv2d, max_pool
from .names import load_canonical, name_parameters


class SKNet(nn.Cell):
    """The reference network of ``spec`` (``fast.accelerate`` rewrites it in place)."""

    def __init__(self, spec, seed=0):
        super().__init__()
        self.spec, self.seed = spec, seed
        plan = build_plan(spec)
        stem = {"conv": conv2d, "bn": lambda c: batch_norm(c, spec.norm), "relu": lambda _: nn.ReLU(),
                "pool": max_pool}
        for name, role, arg in stem_parts(plan):
            self.insert_child_to_cell(name, stem[role](arg))
        self.drop_source = DropSource(seed)
        for stage in plan.stages:
            blocks = [BLOCKS[b.type](b, spec.norm, self.drop_source) for b in stage.blocks]
            setattr(self, stage.name, nn.SequentialCell(blocks))
        # GRAPH mode needs a CellList to loop over the stages, but a CellList renames the
        # parameters it holds ('stages.0...'): name them back after the tree they sit in.
        self.stages = nn.CellList([getattr(self, stage.name) for stage in plan.stages])
        self.num_features = plan.num_features
        self.feature_info = feature_dicts(plan)
        self.set_head(plan)
        name_parameters(self)

    def set_head(self, plan):
        self.num_classes, self.global_pool_type = plan.num_classes, plan.global_pool
        self.use_dropout = plan.dropout > 0
        self.drop = nn.Dropout(p=plan.dropout) if self.use_dropout else nn.Identity()
        self.global_pool = GlobalAvgPool() if plan.global_pool == "avg" else nn.Identity()
        self.fc = nn.Dense(plan.num_features, plan.num_classes) if plan.num_classes else nn.Identity()

    def reset_classifier(self, num_classes, global_pool=None):
        """timm's: a new head of ``num_classes`` (0: none), pooled by ``global_pool`` ("avg" or
        "": none) or as before; its weights are the ones a fresh model of that spec gets."""
        self.spec = self.spec.replace(num_classes=num_classes, global_pool=global_pool)
        self.set_head(build_plan(self.spec))
        if num_classes:
            state = head_state(self.spec, self.seed)
            self.fc.weight.set_data(ms.Tensor(state["fc.weight"]))
            self.fc.bias.set_data(ms.Tensor(state["fc.bias"]))
        self.fc.set_train(self.training)
        # The new head takes the speed-ups the net was built with (accelerate is idempotent).
        accelerate(self, getattr(self, "options", FastOptions.plain()))

    def get_classifier(self):
        return self.fc

    def forward_features(self, x):
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x, pre_logits=False):
        x = self.drop(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def construct(self, x):
        return self.forward_head(self.forward_features(x))


class SKNetFeatures(SKNet):
    """A backbone (timm's ``features_only``): the maps of the spec's ``out_indices``, in order.
    It holds the stages up to the last of them and no head."""

    def __init__(self, spec, seed=0):
        super().__init__(spec, seed)
        self.feature_info = FeatureInfo(spec)
        # Which stage outputs to return, as constants GRAPH mode unrolls the loop with.
        self.take_stem = 0 in self.feature_info.out_indices
        self.take = tuple(i + 1 in self.feature_info.out_indices for i in range(len(self.stages)))

    def construct(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        out = []
        if self.take_stem:
            out.append(x)
        x = self.maxpool(x)
        i = 0
        for stage in self.stages:
            x = stage(x)
            if self.take[i]:
                out.append(x)
            i += 1
        return out


def build(spec, seed=0, fast=None, options=None):
    """A ``mindspore.nn.Cell`` for ``spec``, initialised from ``sknet.params.init_state(spec, seed)``.

    Its cells take the speed-ups of ``options`` (``fast.FastOptions``); without it,
    ``fast=False`` takes none (``FastOptions.plain()``) and None or True those of
    ``fast.resolve_options()``: every one that pays on this device, what every entry point
    of this process builds with.
    """
    if options is None:
        options = FastOptions.plain() if fast is False else resolve_options()
    net = (SKNetFeatures if spec.features.only else SKNet)(spec, seed)
    return accelerate(load_canonical(net, init_state(spec, seed)), options)


def count_trainable(net):
    return sum(int(p.size) for p in net.trainable_params())

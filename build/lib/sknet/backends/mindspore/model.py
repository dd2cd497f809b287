"""Build a MindSpore SKNet from a spec, cell for cell the same tree as the PyTorch backend."""
from mindspore import nn

from sknet.params import init_state

from . import layers
from .layers import BasicBlock, Bottleneck, Conv2d, batch_norm, max_pool, spatial_sum
from .names import load_canonical


class SKNet(nn.Cell):
    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        stem = spec.stem
        self.conv1 = Conv2d(spec.input.in_chans, stem.channels, stem.kernel_size, stem.stride)
        self.bn1 = batch_norm(stem.channels, spec.norm)
        self.act1 = nn.ReLU()
        self.maxpool = max_pool(stem.pool)
        block = Bottleneck if spec.block.type == "bottleneck" else BasicBlock
        inplanes = stem.channels
        stages = []
        for i, (depth, planes, stride) in enumerate(
                zip(spec.stages.depths, spec.stages.channels, spec.stages.strides)):
            blocks = []
            for b in range(depth):
                blocks.append(block(spec, inplanes, planes, stride if b == 0 else 1))
                inplanes = planes * spec.expansion
            setattr(self, f"layer{i + 1}", nn.SequentialCell(blocks))
            stages.append(getattr(self, f"layer{i + 1}"))
        # GRAPH mode needs a CellList to loop over the stages, but a CellList renames the
        # parameters it holds ('stages.0...'): name them back after the tree they sit in.
        self.stages = nn.CellList(stages)
        self.num_features = inplanes
        self.use_dropout = spec.head.dropout > 0
        self.drop = nn.Dropout(p=spec.head.dropout) if self.use_dropout else nn.Identity()
        self.fc = nn.Dense(inplanes, spec.num_classes)
        self.fast_pool = layers.FAST
        for name, param in self.parameters_and_names():
            param.name = name

    def forward_features(self, x):
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x):
        if self.fast_pool:
            x = spatial_sum(x).reshape(x.shape[0], -1) / (x.shape[2] * x.shape[3])
        else:
            x = x.mean(axis=(2, 3))
        return self.fc(self.drop(x))

    def construct(self, x):
        return self.forward_head(self.forward_features(x))


def build(spec, seed=0):
    """A ``mindspore.nn.Cell`` for ``spec``, initialised from ``sknet.params.init_state(spec, seed)``."""
    net = SKNet(spec)
    load_canonical(net, init_state(spec, seed))
    return net


def count_trainable(net):
    return sum(int(p.size) for p in net.trainable_params())

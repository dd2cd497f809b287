"""Reusable ONNX pieces of an SKNet, mirroring ``sknet.backends.torch.layers`` path for path.

Each function appends nodes to a ``GraphBuilder`` and returns the name of the tensor
it produced. Only operators with the same meaning from opset 13 on are used, and none
fixes the batch or the image size, so one graph serves any input shape. Every channel
count, group and branch comes from the block plan (``sknet.plan``).
"""
from sknet.plan import ConvPlan
from sknet.tree import role_names



def conv(g, path, x, c):
    """The ``ConvPlan`` ``c`` as a Conv node on ``x``."""
    return g.node("Conv", [x, g.weight(f"{path}.weight")], path, kernel_shape=[c.kernel, c.kernel],
                  strides=[c.stride, c.stride], dilations=[c.dilation, c.dilation], pads=[c.padding] * 4,
                  group=c.groups)


def batch_norm(g, path, x):
    stats = [g.weight(f"{path}.{s}") for s in ("weight", "bias", "running_mean", "running_var")]
    return g.node("BatchNormalization", [x, *stats], path, epsilon=g.eps)


def conv_bn_act(g, path, x, c, act=True):
    y = batch_norm(g, f"{path}.bn", conv(g, f"{path}.conv", x, c))
    return g.node("Relu", [y], f"{path}.act") if act else y


def add_all(g, name, xs):
    """x0 + x1 + ... left to right, as the frameworks sum; the last sum is called ``name``."""
    out = xs[0]
    for i, x in enumerate(xs[1:], 1):
        out = g.node("Add", [out, x], name if i == len(xs) - 1 else f"{name}.{i}")
    return out


def sk_attention(g, path, fused, sk):
    """Selection weights (N, M, C, 1, 1): pool, reduce to d with BN-ReLU, expand to M*C, softmax over M."""
    s = g.node("GlobalAveragePool", [fused], f"{path}.pool")
    reduce, select = ConvPlan(sk.channels, sk.attn_width), ConvPlan(sk.attn_width, sk.channels * sk.num_branches)
    z = g.node("Relu", [batch_norm(g, f"{path}.bn", conv(g, f"{path}.fc_reduce", s, reduce))], f"{path}.act")
    logits = conv(g, f"{path}.fc_select", z, select)
    # fc_select's channels [i*C, (i+1)*C) score branch i; 0 keeps the batch dimension as it is.
    shape = g.ints(f"{path}.shape", [0, sk.num_branches, sk.channels, 1, 1])
    return g.node("Softmax", [g.node("Reshape", [logits, shape], f"{path}.reshape")], f"{path}.softmax", axis=1)


def selective_kernel(g, path, x, sk):
    """The SK unit of the ``SKPlan`` ``sk``: M conv branches, fused by sum, recombined with per-channel softmax weights."""
    m = sk.num_branches
    if sk.split_input:
        split = g.ints(f"{path}.split_sizes", [sk.branch_in] * m)
        inputs = g.multi("Split", [x, split], f"{path}.split", [f"{path}.split.{i}" for i in range(m)], axis=1)
    else:
        inputs = [x] * m
    branches = [conv_bn_act(g, f"{path}.paths.{i}", inp, b) for i, (b, inp) in enumerate(zip(sk.branches, inputs))]
    fused = add_all(g, f"{path}.fuse", branches) if m > 1 else branches[0]
    weights = sk_attention(g, f"{path}.attn", fused, sk)
    ones = g.ints(f"{path}.select_sizes", [1] * m)
    parts = g.multi("Split", [weights, ones], f"{path}.attn.split",
                    [f"{path}.attn.weights.{i}" for i in range(m)], axis=1)
    axis = g.ints(f"{path}.select_axis", [1])
    selected = [g.node("Mul", [y, g.node("Squeeze", [w, axis], f"{path}.select.{i}.w")], f"{path}.select.{i}")
                for i, (y, w) in enumerate(zip(branches, parts))]
    if m == 1:
        return g.node("Identity", selected, path)
    return add_all(g, path, selected)


def block(g, b, x):
    """The ``BlockPlan`` ``b``: its parts under timm's module names (``sknet.tree.role_names``), then the residual ReLU."""
    name = role_names(b)
    y = x
    if b.reduce is not None:
        y = conv_bn_act(g, f"{b.name}.{name['reduce']}", y, b.reduce, act=b.first_relu)
    y = selective_kernel(g, f"{b.name}.{name['sk']}", y, b.sk)
    y = conv_bn_act(g, f"{b.name}.{name['expand']}", y, b.expand, act=False)
    shortcut = x
    if b.downsample is not None:
        shortcut = batch_norm(g, f"{b.name}.downsample.1", conv(g, f"{b.name}.downsample.0", x, b.downsample))
    return g.node("Relu", [g.node("Add", [y, shortcut], f"{b.name}.add")], b.name)


def max_pool(g, name, x, pool):
    if pool.padding == "same":
        # SAME_UPPER puts the odd padding row/column at the end, as TensorFlow and MindSpore do.
        return g.node("MaxPool", [x], name, kernel_shape=[pool.kernel_size] * 2,
                      strides=[pool.stride] * 2, auto_pad="SAME_UPPER")
    if pool.padding == "caffe":
        return g.node("MaxPool", [x], name, kernel_shape=[pool.kernel_size] * 2, strides=[pool.stride] * 2,
                      pads=[0] * 4, ceil_mode=1)
    return g.node("MaxPool", [x], name, kernel_shape=[pool.kernel_size] * 2, strides=[pool.stride] * 2,
                  pads=[(pool.kernel_size - 1) // 2] * 4)

"""Reusable ONNX pieces of an SKNet, mirroring ``sknet.backends.torch.layers`` path for path.

Each function appends nodes to a ``GraphBuilder`` and returns the name of the tensor
it produced. Only operators with the same meaning from opset 13 on are used, and none
fixes the batch or the image size, so one graph serves any input shape.
"""


def conv(g, path, x, kernel, stride=1, dilation=1, groups=1):
    pad = dilation * (kernel - 1) // 2
    return g.node("Conv", [x, g.weight(f"{path}.weight")], path, kernel_shape=[kernel, kernel],
                  strides=[stride, stride], dilations=[dilation, dilation], pads=[pad] * 4, group=groups)


def batch_norm(g, path, x):
    stats = [g.weight(f"{path}.{s}") for s in ("weight", "bias", "running_mean", "running_var")]
    return g.node("BatchNormalization", [x, *stats], path, epsilon=g.eps)


def conv_bn_act(g, path, x, kernel, stride=1, dilation=1, groups=1, act=True):
    y = batch_norm(g, f"{path}.bn", conv(g, f"{path}.conv", x, kernel, stride, dilation, groups))
    return g.node("Relu", [y], f"{path}.act") if act else y


def add_all(g, name, xs):
    """x0 + x1 + ... left to right, as the frameworks sum; the last sum is called ``name``."""
    out = xs[0]
    for i, x in enumerate(xs[1:], 1):
        out = g.node("Add", [out, x], name if i == len(xs) - 1 else f"{name}.{i}")
    return out


def sk_attention(g, path, fused, channels, num_branches):
    """Selection weights (N, M, C, 1, 1): pool, reduce to d with BN-ReLU, expand to M*C, softmax over M."""
    s = g.node("GlobalAveragePool", [fused], f"{path}.pool")
    z = g.node("Relu", [batch_norm(g, f"{path}.bn", conv(g, f"{path}.fc_reduce", s, 1))], f"{path}.act")
    logits = conv(g, f"{path}.fc_select", z, 1)
    # fc_select's channels [i*C, (i+1)*C) score branch i; 0 keeps the batch dimension as it is.
    shape = g.ints(f"{path}.shape", [0, num_branches, channels, 1, 1])
    return g.node("Softmax", [g.node("Reshape", [logits, shape], f"{path}.reshape")], f"{path}.softmax", axis=1)


def selective_kernel(g, path, x, spec, cin, cout, stride=1, groups=1):
    """The SK unit: M dilated conv branches, fused by sum, recombined with per-channel softmax weights."""
    sk = spec.sk
    m = sk.num_branches
    groups = min(cout, groups)
    if sk.split_input:
        split = g.ints(f"{path}.split_sizes", [cin // m] * m)
        inputs = g.multi("Split", [x, split], f"{path}.split", [f"{path}.split.{i}" for i in range(m)], axis=1)
    else:
        inputs = [x] * m
    branches = [conv_bn_act(g, f"{path}.paths.{i}", inp, b.kernel_size, stride, b.dilation, groups)
                for i, (b, inp) in enumerate(zip(sk.branches, inputs))]
    fused = add_all(g, f"{path}.fuse", branches) if m > 1 else branches[0]
    weights = sk_attention(g, f"{path}.attn", fused, cout, m)
    ones = g.ints(f"{path}.select_sizes", [1] * m)
    parts = g.multi("Split", [weights, ones], f"{path}.attn.split",
                    [f"{path}.attn.weights.{i}" for i in range(m)], axis=1)
    axis = g.ints(f"{path}.select_axis", [1])
    selected = [g.node("Mul", [y, g.node("Squeeze", [w, axis], f"{path}.select.{i}.w")], f"{path}.select.{i}")
                for i, (y, w) in enumerate(zip(branches, parts))]
    if m == 1:
        return g.node("Identity", selected, path)
    return add_all(g, path, selected)


def residual(g, path, y, shortcut):
    return g.node("Relu", [g.node("Add", [y, shortcut], f"{path}.add")], path)


def downsample(g, path, x, stride):
    return batch_norm(g, f"{path}.downsample.1", conv(g, f"{path}.downsample.0", x, 1, stride))


def basic_block(g, path, x, spec, inplanes, planes, stride):
    y = selective_kernel(g, f"{path}.conv1", x, spec, inplanes, planes, stride)
    y = conv_bn_act(g, f"{path}.conv2", y, 3, act=False)
    shortcut = x if stride == 1 and inplanes == planes else downsample(g, path, x, stride)
    return residual(g, path, y, shortcut)


def bottleneck(g, path, x, spec, inplanes, planes, stride):
    width, out = spec.block_width(planes), planes * spec.expansion
    y = conv_bn_act(g, f"{path}.conv1", x, 1, act=spec.block.first_relu)
    y = selective_kernel(g, f"{path}.conv2", y, spec, width, width, stride, spec.stages.groups)
    y = conv_bn_act(g, f"{path}.conv3", y, 1, act=False)
    shortcut = x if stride == 1 and inplanes == out else downsample(g, path, x, stride)
    return residual(g, path, y, shortcut)


def max_pool(g, name, x, pool):
    if pool.padding == "same":
        # SAME_UPPER puts the odd padding row/column at the end, as TensorFlow and MindSpore do.
        return g.node("MaxPool", [x], name, kernel_shape=[pool.kernel_size] * 2,
                      strides=[pool.stride] * 2, auto_pad="SAME_UPPER")
    return g.node("MaxPool", [x], name, kernel_shape=[pool.kernel_size] * 2, strides=[pool.stride] * 2,
                  pads=[(pool.kernel_size - 1) // 2] * 4)

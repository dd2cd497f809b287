"""Which kernel taps of a convolution ever meet its input: framework-free, for both backends' fast paths.

On a map no larger than the dilation (the 1x1 and 2x2 maps of an ImageNet network's last
stages fed 28-32 px images) a 3x3 conv's outer taps only ever multiply padding: their
products are zeros, and so are their weights' gradients. A conv over the live taps alone
gives the same output with a fraction of the work (docs/performance.md). Plain loops and
closed forms: MindSpore's GRAPH mode folds this at compile time from the static shapes.
"""
from .plan import conv_out


def live_taps(n, k, s, p, d):
    """(first, stop) of the taps, along one axis of length ``n``, that meet the input at some output."""
    out = conv_out(n, k, s, p, d)
    first, stop = k, 0
    for i in range(k):
        offset = i * d - p                      # input position of tap i at output 0
        j = max(0, (s - 1 - offset) // s)       # first output whose tap i is not left of the input
        if j < out and j * s + offset < n:
            first = min(first, i)
            stop = i + 1
    return first, stop


def tap_plan(shape, kernel, stride, padding, dilation):
    """(row_first, row_stop, col_first, col_stop, pad_h, pad_w) of the smaller conv with the same output,
    or None where every tap is live or the cropped conv would need uneven padding."""
    plan = []
    cropped = False
    for axis in range(2):
        n, k, s, p, d = shape[axis], kernel[axis], stride[axis], padding[axis], dilation[axis]
        first, stop = live_taps(n, k, s, p, d)
        pad = p - first * d
        if stop <= first or pad < 0 or conv_out(n, stop - first, s, pad, d) != conv_out(n, k, s, p, d):
            return None
        cropped = cropped or stop - first < k
        plan.append((first, stop, pad))
    if not cropped:
        return None
    return plan[0][0], plan[0][1], plan[1][0], plan[1][1], plan[0][2], plan[1][2]

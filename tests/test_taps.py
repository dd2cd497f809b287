"""sknet.taps against a brute-force enumeration of every tap's input positions."""
import itertools

from sknet.taps import live_taps, tap_plan


def brute_live(n, k, s, p, d):
    out = (n + 2 * p - d * (k - 1) - 1) // s + 1
    live = [i for i in range(k) if any(0 <= j * s - p + i * d < n for j in range(out))]
    return (live[0], live[-1] + 1) if live else (k, 0)


def test_live_taps_match_enumeration():
    checked = 0
    for n, k, s, p, d in itertools.product(range(1, 10), (1, 3, 5, 7), (1, 2, 3), range(7), (1, 2, 3)):
        if n + 2 * p - d * (k - 1) - 1 < 0:
            continue   # no output at all
        assert live_taps(n, k, s, p, d) == brute_live(n, k, s, p, d), (n, k, s, p, d)
        checked += 1
    assert checked > 1500


def test_tap_plan_crops_only_what_meets_nothing_but_padding():
    # A 3x3 conv on a 1x1 map, or dilated by 2 on a 2x2 one, is its centre tap alone.
    assert tap_plan((1, 1), (3, 3), (1, 1), (1, 1), (1, 1)) == (1, 2, 1, 2, 0, 0)
    assert tap_plan((2, 2), (3, 3), (1, 1), (2, 2), (2, 2)) == (1, 2, 1, 2, 0, 0)
    # Stride 2 on a 2x2 map: the one output sees input rows 0 and 1 through taps 1 and 2.
    assert tap_plan((2, 2), (3, 3), (2, 2), (1, 1), (1, 1)) == (1, 3, 1, 3, 0, 0)
    # Every tap live (ImageNet sizes), or only one axis cropped.
    assert tap_plan((7, 7), (3, 3), (1, 1), (2, 2), (2, 2)) is None
    assert tap_plan((56, 56), (3, 3), (1, 1), (1, 1), (1, 1)) is None
    assert tap_plan((1, 5), (3, 3), (1, 1), (1, 1), (1, 1)) == (1, 2, 0, 3, 0, 1)

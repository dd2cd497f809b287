"""The extension's resize (sknet/data/_resample.c) against PIL's Image.resize, byte for byte."""
import numpy as np
import pytest
from PIL import Image

from sknet.data import folder as F

pytestmark = pytest.mark.skipif(F._jpeg is None, reason="sknet.data._jpeg is not built (python setup.py build_ext "
                                "--inplace; needs libjpeg-turbo headers)")


def _pil(img, size, resample, box, flip):
    out = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).resize(size, resample, box=box)
    out = out.transpose(Image.FLIP_LEFT_RIGHT) if flip else out
    return np.asarray(out).reshape(size[1], size[0], img.shape[2])


def _ours(img, size, resample, box, flip, order=None):
    order = F.resize_order() if order is None else order
    h, w, c = img.shape
    out = F._jpeg.resample(img.tobytes(), w, h, c, tuple(float(v) for v in box), size[0], size[1], resample, order,
                           flip)
    return np.frombuffer(out, np.uint8).reshape(size[1], size[0], c)


def _cases(n, seed, largest=90):
    """Random images (noise, or smooth ramps), sizes and boxes: the whole image, whole-pixel
    boxes (crops where the size matches), fractional ones; shrinking, enlarging, same size."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        c = int(rng.choice([1, 3]))
        h, w = (int(v) for v in rng.integers(1, largest, 2))
        img = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        if rng.random() < 0.5:
            img = np.clip(np.cumsum(img.astype(int) - 128, 1) // 8 + 128, 0, 255).astype(np.uint8)
        size = tuple(int(v) for v in rng.integers(1, largest, 2))
        kind = rng.random()
        if kind < 0.2:
            box = (0, 0, w, h)
        elif kind < 0.45:
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            box = (x0, y0, int(rng.integers(x0, w + 1)), int(rng.integers(y0, h + 1)))
            if rng.random() < 0.3 and box[2] > x0 and box[3] > y0:
                size = (box[2] - x0, box[3] - y0)          # PIL's crop shortcut
        else:
            x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
            box = (x0, y0, rng.uniform(x0, w), rng.uniform(y0, h))
        if rng.random() < 0.1:
            size = (w, h)
        yield img, size, int(rng.choice([Image.BILINEAR, Image.BICUBIC])), box, bool(rng.random() < 0.5)


def test_the_extension_resizes_to_pils_pixels():
    assert F.resize_order() is not None, "the extension reproduces neither of PIL's pass orders"
    for i, (img, size, resample, box, flip) in enumerate(_cases(1500, 0)):
        np.testing.assert_array_equal(_ours(img, size, resample, box, flip), _pil(img, size, resample, box, flip),
                                      err_msg=f"case {i}: {img.shape} box {box} -> {size}, filter {resample}")


def test_pipeline_sized_crops_resize_to_pils_pixels():
    """The training pipeline's shapes: crops of a 375 x 500 photo-like image to 224 (shrinking
    and enlarging), a whole image to 64 (a shrink of 6-8x), grey and colour."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:375, 0:500]
    photo = np.stack([xx * 255 // 499, yy * 255 // 374, (xx * yy) % 256], axis=2).astype(np.float32)
    photo = np.clip(photo + rng.normal(0, 20, photo.shape), 0, 255).astype(np.uint8)
    for img in (photo, photo[:, :, 1:2].copy()):
        for box, size in (((10.5, 20.25, 410.5, 320.75), (224, 224)), ((100.3, 50.2, 180.9, 140.1), (224, 224)),
                          ((0, 0, 500, 375), (64, 64)), ((37, 0, 290, 375), (224, 224))):
            for resample in (Image.BILINEAR, Image.BICUBIC):
                np.testing.assert_array_equal(_ours(img, size, resample, box, True),
                                              _pil(img, size, resample, box, True))


def test_the_pass_order_shows_and_the_probe_finds_pils():
    """Each pass rounds to uint8, so running them in the other order gives other pixels on
    some sizes: the probe (resize_order) must pick PIL's, and without a matching order the
    files fall back to PIL's resize."""
    order = F.resize_order()
    other = 1 - order
    differ = sum(not np.array_equal(_ours(img, size, r, box, flip, other), _pil(img, size, r, box, flip))
                 for img, size, r, box, flip in _cases(300, 2))
    assert differ > 10


def test_files_fall_back_to_pils_resize_when_the_extension_does_not_match(tmp_path, monkeypatch):
    class Skewed:
        """The extension, with a resize that is one level off."""
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def resample(*args):
            return bytes((v + 1) % 256 for v in real.resample(*args))

    real = F._jpeg
    img = np.random.default_rng(3).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=95)
    want = np.asarray(F.Encoded(str(tmp_path / "a.jpg"), 3).image((5, 7, 40, 50), 32, 32, Image.BICUBIC))
    monkeypatch.setattr(F, "_jpeg", Skewed())
    F.resize_order.cache_clear()
    try:
        assert F.resize_order() is None
        got = np.asarray(F.Encoded(str(tmp_path / "a.jpg"), 3).image((5, 7, 40, 50), 32, 32, Image.BICUBIC))
    finally:
        F.resize_order.cache_clear()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("args, message", [
    ((b"\0" * 12, 2, 2, 3, (0.0, 0.0, 2.0, 2.0), 1, 1, Image.BICUBIC, 1, False), None),
    ((b"\0" * 12, 2, 2, 2, (0.0, 0.0, 2.0, 2.0), 1, 1, Image.BICUBIC, 1, False), "channels must be 1 or 3"),
    ((b"\0" * 11, 2, 2, 3, (0.0, 0.0, 2.0, 2.0), 1, 1, Image.BICUBIC, 1, False), "not width x height x channels"),
    ((b"\0" * 12, 2, 2, 3, (0.0, 0.0, 3.0, 2.0), 1, 1, Image.BICUBIC, 1, False), "exceed original image size"),
    ((b"\0" * 12, 2, 2, 3, (-1.0, 0.0, 2.0, 2.0), 1, 1, Image.BICUBIC, 1, False), "offset can't be negative"),
    ((b"\0" * 12, 2, 2, 3, (1.0, 0.0, 0.5, 2.0), 1, 1, Image.BICUBIC, 1, False), "box can't be empty"),
    ((b"\0" * 12, 2, 2, 3, (0.0, 0.0, 2.0, 2.0), 0, 1, Image.BICUBIC, 1, False), "must be > 0"),
    ((b"\0" * 12, 2, 2, 3, (0.0, float("nan"), 2.0, 2.0), 1, 1, Image.BICUBIC, 1, False), "box must be finite"),
    ((b"\0" * 12, 2, 2, 3, (0.0, 0.0, 2.0, 2.0), 1, 1, Image.LANCZOS, 1, False), "BILINEAR or BICUBIC"),
    ((b"\0" * 12, 2, 2, 3, (0.0, 0.0, 2.0, 2.0), 1, 1, Image.BICUBIC, 2, False), "order must be 0 or 1"),
])
def test_bad_arguments_are_one_line_errors(args, message):
    if message is None:
        assert F._jpeg.resample(*args) == b"\0\0\0"
        return
    with pytest.raises(ValueError, match=message):
        F._jpeg.resample(*args)

"""Image transforms in NumPy and PIL, identical for every backend.

Every random choice is drawn from a ``numpy.random.Generator`` handed in by the caller;
the dataset makes one per (seed, epoch, image index), so an image gets the same crop,
flip, jitter and erasing on PyTorch and MindSpore, under any number of workers, and
after a resume. Images travel as uint8 HWC arrays (or, from files, as ``Encoded``
images not decoded until the crop is known) until ``normalize`` turns them into float32
CHW, or ``to_chw`` into uint8 CHW for a train step that normalises (``normalize_batch``
is the reference it matches bit for bit): a quarter of the bytes to write, stack and
hand from loader workers to the step.
"""
import math

import numpy as np
from PIL import Image

from . import folder
from .folder import Encoded

RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
# ITU-R 601-2 luma, as PIL's convert("L") and torchvision's grayscale.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def item_rng(seed, epoch, index):
    """The generator for one image in one epoch (the tag 1 keeps it apart from the sampler's)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 1, epoch, index])))


def _pil(img):
    return Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)


def _array(pil, channels):
    arr = np.asarray(pil)
    return arr[:, :, None] if arr.ndim == 2 else arr


def decoded(img):
    """A uint8 HWC array of an array or an ``Encoded`` file."""
    return img.array() if isinstance(img, Encoded) else img


def resize_crop(img, box, size, interpolation):
    """Crop ``box`` = (top, left, height, width) of a uint8 HWC image and resize it to size x size."""
    if isinstance(img, Encoded):
        return img.resized(box, size, size, RESAMPLE[interpolation])
    top, left, h, w = box
    if (h, w) == (size, size):
        return np.ascontiguousarray(img[top:top + h, left:left + w])
    out = _pil(img).resize((size, size), RESAMPLE[interpolation], box=(left, top, left + w, top + h))
    return _array(out, img.shape[2])


def random_resized_crop_box(height, width, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Inception-style crop: area fraction in ``scale``, log-uniform aspect in ``ratio``; 10 tries, then a centre crop."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback: the largest centre crop whose aspect lies within ``ratio``.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(img, rng, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="bilinear"):
    """A random crop of a uint8 HWC array or an ``Encoded`` file (drawn from its header size), resized."""
    box = random_resized_crop_box(img.shape[0], img.shape[1], rng, scale, ratio)
    return resize_crop(img, box, size, interpolation)


def pad_crop(img, rng, size, padding):
    """Zero-pad by ``padding`` on every side, then a random size x size crop (CIFAR-style)."""
    h, w, c = img.shape
    if h + 2 * padding < size or w + 2 * padding < size:
        img = resize_short(img, size, "bilinear")
        h, w, c = img.shape
    top = int(rng.integers(0, h + 2 * padding - size + 1))
    left = int(rng.integers(0, w + 2 * padding - size + 1))
    # Copy the overlap of the crop window with the image instead of padding the whole image.
    out = np.zeros((size, size, c), img.dtype)
    y0, y1 = max(top, padding), min(top + size, padding + h)
    x0, x1 = max(left, padding), min(left + size, padding + w)
    if y1 > y0 and x1 > x0:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = img[y0 - padding:y1 - padding, x0 - padding:x1 - padding]
    return out


def hflip(img, rng, p=0.5):
    return np.ascontiguousarray(img[:, ::-1]) if p > 0 and rng.random() < p else img


def _gray(x):
    return x[..., :1] if x.shape[2] == 1 else (x @ LUMA)[..., None]


# Each adjustment blends float HWC pixels in [0, 255] with a reference image and clips:
# black (brightness), the mean grey level (contrast), the greyscale image (saturation),
# as PIL's ImageEnhance, torchvision's ColorJitter and MindSpore's RandomColorAdjust do.
def adjust_brightness(x, f):
    return np.clip(x * np.float32(f), 0.0, 255.0)


def adjust_contrast(x, f):
    f = np.float32(f)
    return np.clip(f * x + (1 - f) * _gray(x).mean(), 0.0, 255.0)


def adjust_saturation(x, f):
    if x.shape[2] == 1:
        return x
    f = np.float32(f)
    return np.clip(f * x + (1 - f) * _gray(x), 0.0, 255.0)


ADJUSTMENTS = (adjust_brightness, adjust_contrast, adjust_saturation)


def color_jitter(img, rng, strength):
    """Brightness, contrast and saturation, each by a factor in [max(0, 1-s), 1+s], in random order.

    Returns float32 HWC in [0, 255].
    """
    x = img.astype(np.float32)
    if strength <= 0:
        return x
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    factors = [rng.uniform(lo, hi) for _ in ADJUSTMENTS]
    for op in rng.permutation(len(ADJUSTMENTS)):
        x = ADJUSTMENTS[op](x, factors[op])
    return x


def normalize(img, mean, std, bgr=False):
    """uint8/float HWC in [0, 255] -> float32 CHW, (x / 255 - mean) / std per channel; with
    ``bgr`` the RGB image's channels are reversed first (mean and std are in BGR order)."""
    x = np.asarray(img, np.float32) * np.float32(1 / 255)
    if bgr and x.shape[2] == 3:
        x = x[:, :, ::-1]
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _pil_u8(img):
    return img if isinstance(img, Image.Image) else _pil(img)


def _point(img, table):
    """A per-level lookup table applied to every band (PIL's C loop, no float image)."""
    # Python ints: PIL converts NumPy scalars one by one, three times slower.
    return img.point(table.tolist() * len(img.getbands()))


def _grey_mean(img):
    grey = img if img.mode == "L" else img.convert("L")
    hist = np.asarray(grey.histogram(), np.float64)
    return float(hist @ np.arange(256) / hist.sum())


LEVELS = np.arange(256, dtype=np.float32)


def jitter_draws(rng, strength):
    """(factors, order) of ``color_jitter``: three factors in [max(0, 1-s), 1+s], then an order."""
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    factors = [rng.uniform(lo, hi) for _ in ADJUSTMENTS]
    return factors, rng.permutation(len(ADJUSTMENTS))


def color_jitter_pil(pil, rng, strength):
    """``color_jitter_u8`` on a PIL image, giving a PIL image (the file pipeline's form)."""
    if strength <= 0:
        return pil
    factors, order = jitter_draws(rng, strength)
    for op in order:
        f = np.float32(factors[op])
        if op == 0:
            pil = _point(pil, np.clip(np.rint(LEVELS * f), 0, 255).astype(np.uint8))
        elif op == 1:
            mean = np.float32(_grey_mean(pil))
            pil = _point(pil, np.clip(np.rint(f * LEVELS + (1 - f) * mean), 0, 255).astype(np.uint8))
        elif pil.mode == "RGB":
            pil = Image.blend(pil.convert("L").convert("RGB"), pil, float(f))
    return pil


def color_jitter_u8(img, rng, strength):
    """``color_jitter``'s draws and order on uint8: each adjustment rounds to whole levels.

    Brightness and contrast are lookup tables on every band; saturation blends with the
    greyscale image as PIL's ImageEnhance.Color does. Each step rounds to whole levels, so
    the result stays within 3 levels of the float32 ``color_jitter``; no float image is made.
    Returns a uint8 HWC array.
    """
    if strength <= 0:
        return img
    pil = color_jitter_pil(_pil_u8(img), rng, strength)
    return _array(pil, 1 if pil.mode == "L" else 3)


def normalize_u8(img, mean, std, bgr=False):
    """``normalize`` of a uint8 HWC array or a PIL image, bit-identical to it.

    One channel at a time: the same float32 operations in the same order as ``normalize``
    (so the same values), written in place into the CHW output, with no float HWC image and
    no transposed copy of one (a PIL image is split into its bands, already contiguous).
    """
    if isinstance(img, Image.Image):
        bands = [np.asarray(b) for b in (img.split() if img.mode != "L" else (img,))]
    else:
        bands = [img[:, :, c] for c in range(img.shape[2])]
    if bgr and len(bands) == 3:
        bands = bands[::-1]
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    out = np.empty((len(bands),) + bands[0].shape, np.float32)
    for c, band in enumerate(bands):
        o = out[c]
        o[...] = band
        o *= np.float32(1 / 255)
        o -= mean[c]
        o /= std[c]
    return out


def to_chw(img, bgr=False):
    """uint8 CHW of a uint8 HWC array or a PIL image (channels reversed with ``bgr``): what
    ``normalize_u8`` starts from, left for the train step to normalise (``normalize_batch``)."""
    arr = _array(img, 1 if img.mode == "L" else 3) if isinstance(img, Image.Image) else img
    if bgr and arr.shape[2] == 3:
        arr = arr[:, :, ::-1]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def normalize_batch(x, mean, std):
    """``normalize`` of a uint8 NCHW batch from ``to_chw``: the same float32 operations, the same values.

    The reference for the backends' in-step normalisation (``sknet.data.step_normalization``).
    """
    x = x.astype(np.float32) * np.float32(1 / 255)
    x -= np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    x /= np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    return x


def random_erasing(x, rng, p, mode="const", scale=(0.02, 1 / 3), ratio=(0.3, 3.3)):
    """With probability ``p`` erase one random rectangle of a normalised CHW image (Zhong et al.).

    "const" fills with 0 (the mean after normalisation), "pixel" with standard normal noise.
    """
    if p <= 0 or rng.random() >= p:
        return x
    c, h, w = x.shape
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = h * w * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        eh = int(round(math.sqrt(target * aspect)))
        ew = int(round(math.sqrt(target / aspect)))
        if 0 < eh < h and 0 < ew < w:
            top = int(rng.integers(0, h - eh + 1))
            left = int(rng.integers(0, w - ew + 1))
            x = x.copy()
            if mode == "pixel":
                x[:, top:top + eh, left:left + ew] = rng.standard_normal((c, eh, ew), dtype=np.float32)
            else:
                x[:, top:top + eh, left:left + ew] = 0.0
            return x
    return x


def resize_short(img, short, interpolation):
    """Resize so the shorter side is ``short``, keeping the aspect ratio."""
    h, w = img.shape[:2]
    if min(h, w) == short:
        return decoded(img)
    # The long side is truncated, as torchvision's Resize(int) and timm's eval transform do.
    if h <= w:
        nh, nw = short, int(w * short / h)
    else:
        nh, nw = int(h * short / w), short
    if isinstance(img, Encoded):
        return img.resized((0, 0, h, w), nw, nh, RESAMPLE[interpolation])
    return _array(_pil(img).resize((nw, nh), RESAMPLE[interpolation]), img.shape[2])


def center_crop(img, size):
    h, w = img.shape[:2]
    if h < size or w < size:
        raise ValueError(f"cannot centre-crop {size} px from a {h}x{w} image")
    top, left = int(round((h - size) / 2)), int(round((w - size) / 2))
    return np.ascontiguousarray(img[top:top + size, left:left + size])


def eval_resize(size, crop_pct):
    """Shorter side before the centre crop: floor(size / crop_pct), as timm and mindcv."""
    return int(math.floor(size / crop_pct))


class TrainTransform:
    """Crop, flip, colour jitter, normalise, random erasing; picklable for loader workers."""

    def __init__(self, size, mean, std, crop="random_resized", scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 padding=4, interpolation="bilinear", hflip=0.5, color_jitter=0.0, re_prob=0.0,
                 re_mode="const", crop_pct=1.0, bgr=False):
        self.size, self.mean, self.std, self.bgr = size, tuple(mean), tuple(std), bgr
        self.crop, self.scale, self.ratio, self.padding = crop, tuple(scale), tuple(ratio), padding
        self.interpolation, self.hflip, self.color_jitter = interpolation, hflip, color_jitter
        self.re_prob, self.re_mode, self.crop_pct = re_prob, re_mode, crop_pct

    @property
    def defers_normalization(self):
        """Whether ``u8=True`` is honoured: random erasing works on normalised values, so not with it."""
        return self.re_prob <= 0

    def __call__(self, img, rng, u8=False):
        """float32 CHW, normalised; or, with ``u8`` and no random erasing, uint8 CHW for the step to normalise."""
        u8 = u8 and self.defers_normalization
        if self.crop == "random_resized" and isinstance(img, Encoded):
            return self._from_file(img, rng, u8)
        if self.crop == "random_resized":
            img = random_resized_crop(img, rng, self.size, self.scale, self.ratio, self.interpolation)
        elif self.crop == "pad":
            img = pad_crop(decoded(img), rng, self.size, self.padding)
        else:
            img = EvalTransform.crop(self, img)
        img = hflip(img, rng, self.hflip)
        if self.color_jitter > 0:
            img = color_jitter_u8(img, rng, self.color_jitter)
        if u8:
            return to_chw(img, self.bgr)
        x = normalize_u8(img, self.mean, self.std, self.bgr)
        return random_erasing(x, rng, self.re_prob, self.re_mode)

    def _from_file(self, enc, rng, u8):
        """The same steps and draws, on a PIL image from decode to normalisation (no array copies between)."""
        box = random_resized_crop_box(enc.shape[0], enc.shape[1], rng, self.scale, self.ratio)
        flip = self.hflip > 0 and rng.random() < self.hflip
        pil = enc.image(box, self.size, self.size, RESAMPLE[self.interpolation], flip)
        fast = folder._jpeg
        if fast is not None:
            # The C extension's one pass: the same jitter and normalisation arithmetic as below.
            factors, order = jitter_draws(rng, self.color_jitter) if self.color_jitter > 0 else ([1.0] * 3, [])
            channels = len(pil.getbands())
            x = np.empty((channels, pil.height, pil.width), np.uint8 if u8 else np.float32)
            fast.finish(pil.tobytes(), pil.width * pil.height, channels, bytes(int(k) for k in order),
                        np.asarray(factors, np.float32).tobytes(), np.asarray(self.mean, np.float32).tobytes(),
                        np.asarray(self.std, np.float32).tobytes(), bool(self.bgr), x)
        else:
            if self.color_jitter > 0:
                pil = color_jitter_pil(pil, rng, self.color_jitter)
            if u8:
                return to_chw(pil, self.bgr)
            x = normalize_u8(pil, self.mean, self.std, self.bgr)
        return x if u8 else random_erasing(x, rng, self.re_prob, self.re_mode)


class EvalTransform:
    """Resize the shorter side to floor(size / crop_pct), centre-crop size, normalise."""

    def __init__(self, size, mean, std, crop_pct=0.875, interpolation="bilinear", bgr=False):
        self.size, self.mean, self.std, self.bgr = size, tuple(mean), tuple(std), bgr
        self.crop_pct, self.interpolation = crop_pct, interpolation

    def crop(self, img):
        img = resize_short(img, eval_resize(self.size, self.crop_pct), self.interpolation)
        return center_crop(img, self.size)

    defers_normalization = True

    def __call__(self, img, rng=None, u8=False):
        img = self.crop(img)
        return to_chw(img, self.bgr) if u8 else normalize_u8(img, self.mean, self.std, self.bgr)

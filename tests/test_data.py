"""The data pipeline: IDX reader against known Fashion-MNIST facts, ImageFolder, transforms,
determinism for a seed, per-worker shards."""
import gzip
import importlib.util
import hashlib
import math
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sknet import SpecError, get_spec
from sknet.data import DatasetError, build_dataset, epoch_batches, shard_indices, steps_per_epoch
from sknet.data import transforms as T
from sknet.data.idx import load_split, read_idx
from sknet.recipe import data_root, load_recipe

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
# foolbox is installed without its dependencies, only for its 20 ImageNet photos: locate, don't import.
_foolbox = importlib.util.find_spec("foolbox")
FOOLBOX = Path(_foolbox.origin).parent / "data" if _foolbox and _foolbox.origin else None


def fmnist(**overrides):
    return load_recipe("fashion_mnist_small", overrides or None)


# The shipped Fashion-MNIST recipe has no augmentation: determinism is checked with some.
AUGMENTED = {"data.crop": "pad", "data.padding": 2, "data.hflip": 0.5, "data.re_prob": 0.5}


# --- IDX ----------------------------------------------------------------------------------------

@needs_fmnist
def test_fashion_mnist_files_hold_the_published_facts():
    root = str(data_root(fmnist()))
    train_x, train_y = load_split(root, "train")
    test_x, test_y = load_split(root, "test")
    assert train_x.shape == (60000, 28, 28) and train_x.dtype == np.uint8
    assert test_x.shape == (10000, 28, 28) and test_y.shape == (10000,)
    np.testing.assert_array_equal(np.bincount(train_y), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(test_y), [1000] * 10)
    # First labels as in Zalando's README figures: ankle boot, T-shirt, T-shirt, dress, ...
    assert train_y[:5].tolist() == [9, 0, 0, 3, 0] and test_y[:5].tolist() == [9, 2, 1, 1, 6]
    # The normalisation constants in sknet_small.yaml are the train set's pixel mean and std.
    spec = get_spec("sknet_small")
    assert train_x.mean() / 255 == pytest.approx(spec.input.mean[0], abs=5e-5)
    assert train_x.std() / 255 == pytest.approx(spec.input.std[0], abs=5e-5)


def write_idx(path, array, type_code=0x08):
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_idx_reader_round_trips_raw_gz_and_big_endian(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    write_idx(tmp_path / "a.gz", images)
    write_idx(tmp_path / "a", images)
    ints = rng.integers(-2**30, 2**30, (7,), dtype=np.int32)
    write_idx(tmp_path / "b", ints, 0x0C)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "b"), ints)


def test_idx_reader_rejects_broken_files_naming_them(tmp_path):
    images = np.zeros((5, 4, 3), np.uint8)
    write_idx(tmp_path / "short", images)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(DatasetError, match=r"short: holds 59 data bytes, header \(5, 4, 3\) says 60"):
        read_idx(tmp_path / "short")
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(DatasetError, match="png: not an IDX file"):
        read_idx(tmp_path / "png")
    with pytest.raises(DatasetError, match=f"{tmp_path}: no train-images-idx3-ubyte"):
        load_split(str(tmp_path), "train")


# --- sharding -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n,world", [(1000, 2), (1000, 3), (7, 4), (60000, 8)])
def test_shards_are_disjoint_and_cover_the_epoch(n, world):
    shards = [shard_indices(n, world, r, seed=3, epoch=1, shuffle=True, drop_last=True) for r in range(world)]
    flat = np.concatenate(shards)
    assert all(len(s) == n // world for s in shards)
    assert len(np.unique(flat)) == len(flat) == n - n % world and flat.min() >= 0 and flat.max() < n
    # Evaluation: no padding, disjoint, every image exactly once.
    evals = [shard_indices(n, world, r, shuffle=False, drop_last=False, pad=False) for r in range(world)]
    np.testing.assert_array_equal(np.sort(np.concatenate(evals)), np.arange(n))
    # Training without drop_last: equal sizes (DDP needs them), every image at least once.
    padded = [shard_indices(n, world, r, seed=3, epoch=1, drop_last=False) for r in range(world)]
    assert {len(s) for s in padded} == {math.ceil(n / world)}
    assert set(np.concatenate(padded).tolist()) == set(range(n))


def test_order_depends_on_seed_and_epoch_only():
    a = shard_indices(500, 2, 1, seed=0, epoch=3)
    np.testing.assert_array_equal(a, shard_indices(500, 2, 1, seed=0, epoch=3))
    assert not np.array_equal(a, shard_indices(500, 2, 1, seed=0, epoch=4))
    assert not np.array_equal(a, shard_indices(500, 2, 1, seed=1, epoch=3))
    np.testing.assert_array_equal(shard_indices(10, 2, 0, shuffle=False), [0, 2, 4, 6, 8])
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        shard_indices(10, 2, 2)


@pytest.mark.parametrize("n,world,batch,drop", [(60000, 2, 128, True), (1000, 3, 64, False), (10, 1, 4, True)])
def test_epoch_batches_count_and_content(n, world, batch, drop):
    count = steps_per_epoch(n, world, batch, drop)
    assert count == (n // world // batch if drop else math.ceil(math.ceil(n / world) / batch))
    for rank in range(world):
        batches = epoch_batches(n, world, rank, batch, seed=5, epoch=2, drop_last=drop)
        assert len(batches) == count and all(len(b) == batch for b in batches[:-1])
        shard = shard_indices(n, world, rank, 5, 2, True, drop)
        np.testing.assert_array_equal(np.concatenate(batches), shard[:sum(map(len, batches))])


# --- transforms ---------------------------------------------------------------------------------

def test_normalize_is_per_channel_standardisation_to_chw():
    img = np.empty((5, 6, 3), np.uint8)
    img[...] = [0, 128, 255]
    x = T.normalize(img, (0.5, 0.5, 0.25), (0.5, 0.25, 0.5))
    assert x.shape == (3, 5, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], [(0 - 0.5) / 0.5, (128 / 255 - 0.5) / 0.25, (1 - 0.25) / 0.5],
                               rtol=0, atol=1e-6)   # float32: a few ulps of values up to 4


def test_pad_crop_equals_cropping_a_zero_padded_image():
    rng = np.random.default_rng(1)
    img = rng.integers(1, 256, (28, 28, 1), dtype=np.uint8)
    padded = np.pad(img, ((3, 3), (3, 3), (0, 0)))
    seen = set()
    for i in range(40):
        out = T.pad_crop(img, np.random.default_rng([i]), 28, 3)
        draw = np.random.default_rng([i])
        top, left = int(draw.integers(0, 7)), int(draw.integers(0, 7))
        np.testing.assert_array_equal(out, padded[top:top + 28, left:left + 28])
        seen.add((top, left))
    assert len(seen) > 20


def test_random_resized_crop_boxes_respect_scale_and_ratio():
    rng = np.random.default_rng(0)
    areas, aspects = [], []
    for _ in range(500):
        top, left, h, w = T.random_resized_crop_box(300, 400, rng, (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
        areas.append(h * w / (300 * 400))
        aspects.append(w / h)
    # Rounding to whole pixels moves area and aspect by a pixel's worth at most.
    assert 0.08 - 0.01 <= min(areas) and max(areas) <= 1.0
    assert 3 / 4 - 0.03 <= min(aspects) and max(aspects) <= 4 / 3 + 0.03
    # A ratio range the image cannot satisfy falls back to the largest centre crop in range.
    assert T.random_resized_crop_box(100, 400, rng, (0.99, 1.0), (1.0, 1.0)) == (0, 150, 100, 100)


def test_eval_transform_resizes_short_side_then_centre_crops():
    # An image whose pixels encode their column: after resize to 256 and crop 224, the
    # crop's columns are the middle of the resized image.
    cols = np.tile(np.linspace(0, 255, 400).astype(np.uint8), (300, 1))
    img = np.stack([cols] * 3, axis=2)
    tf = T.EvalTransform(224, (0, 0, 0), (1, 1, 1), crop_pct=0.875, interpolation="bilinear")
    assert T.eval_resize(224, 0.875) == 256
    x = tf(img)
    assert x.shape == (3, 224, 224)
    resized = np.asarray(Image.fromarray(img).resize((341, 256), Image.BILINEAR))
    np.testing.assert_array_equal(np.round(x * 255).astype(np.uint8).transpose(1, 2, 0),
                                  resized[16:240, 58:282])


@pytest.mark.parametrize("factor", [0.6, 1.0, 1.4])
def test_colour_adjustments_match_pil_image_enhance(factor):
    from PIL import ImageEnhance

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    for ours, theirs in ((T.adjust_brightness, ImageEnhance.Brightness),
                         (T.adjust_contrast, ImageEnhance.Contrast),
                         (T.adjust_saturation, ImageEnhance.Color)):
        got = ours(img.astype(np.float32), factor)
        ref = np.asarray(theirs(Image.fromarray(img)).enhance(factor)).astype(np.float32)
        # PIL rounds its output and grey image to uint8 (<= 1 level) and, for contrast, the
        # mean grey to an integer (<= 0.5 x |1 - factor|); we keep float32 throughout.
        np.testing.assert_allclose(got, ref, rtol=0, atol=1.0 + 0.5 * abs(1 - factor), err_msg=ours.__name__)


def test_flip_jitter_and_erasing_behave():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(T.hflip(img, rng, p=1.0), img[:, ::-1])
    assert T.hflip(img, rng, p=0.0) is img
    np.testing.assert_array_equal(T.color_jitter(img, rng, 0.0), img.astype(np.float32))
    grey = np.repeat(img[:, :, :1], 3, axis=2)
    for _ in range(20):
        out = T.color_jitter(grey, rng, 0.4)
        assert out.min() >= 0 and out.max() <= 255
        # Saturation has nothing to change on a grey image; brightness/contrast keep it grey.
        np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-3)
    x = np.ones((3, 40, 40), np.float32)
    erased = T.random_erasing(x, rng, p=1.0)
    hole = erased[0] == 0
    rows, cols = np.nonzero(hole)
    area = hole.sum() / hole.size
    assert 0.02 * 0.9 <= area <= 1 / 3 * 1.1
    assert hole[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()   # one rectangle
    assert (erased[:, hole] == 0).all() and (erased[:, ~hole] == 1).all()
    assert T.random_erasing(x, rng, p=0.0) is x


# --- datasets -----------------------------------------------------------------------------------

@needs_fmnist
def test_fashion_mnist_dataset_items_and_normalisation():
    train, val = build_dataset(fmnist(), split="train"), build_dataset(fmnist(), split="val")
    assert (len(train), len(val), train.num_classes) == (60000, 10000, 10)
    x, y = val[0]
    assert x.shape == (1, 28, 28) and x.dtype == np.float32 and y == 9
    raw = load_split(str(data_root(fmnist())), "test")[0][0]
    np.testing.assert_allclose(x[0], (raw / 255 - 0.2860) / 0.3530, rtol=1e-5, atol=1e-5)
    xs, ys = val.batch(range(0, 10000, 10))
    assert xs.shape == (1000, 1, 28, 28) and ys.dtype == np.int64
    # The test set has nearly the train set's statistics.
    assert abs(xs.mean()) < 0.02 and abs(xs.std() - 1) < 0.02
    tx, _ = train.batch(range(64), epoch=0)
    assert tx.shape == (64, 1, 28, 28)


@needs_fmnist
def test_same_seed_same_batches_other_seed_or_epoch_different():
    a, b = build_dataset(fmnist(**AUGMENTED)), build_dataset(fmnist(**AUGMENTED))
    idx = epoch_batches(len(a), 2, 1, 128, seed=0, epoch=1)[3]
    xa, ya = a.batch(idx, epoch=1)
    xb, yb = b.batch(idx, epoch=1)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(xa, a.batch(idx, epoch=2)[0])
    assert not np.array_equal(xa, build_dataset(fmnist(seed=1, **AUGMENTED)).batch(idx, epoch=1)[0])
    # ``ds[i]`` follows set_epoch; a pickled copy (what loader workers get) gives the same values.
    a.set_epoch(1)
    np.testing.assert_array_equal(a[int(idx[0])][0], xa[0])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(a))[int(idx[0])][0], xa[0])


@needs_fmnist
def test_batches_repeat_in_a_fresh_process():
    """A fresh interpreter (as a worker on the other backend is) makes bit-identical batches."""
    code = ("import hashlib; from sknet.recipe import load_recipe; from sknet.data import build_dataset;"
            f"ds = build_dataset(load_recipe('fashion_mnist_small', {AUGMENTED!r}));"
            "x, y = ds.batch(range(100, 164), epoch=2);"
            "print(hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"}).stdout.strip()
    x, y = build_dataset(fmnist(**AUGMENTED)).batch(range(100, 164), epoch=2)
    assert out == hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()


def make_folder(tmp_path, per_class=3, classes=(0, 1, 7)):
    """A train/val tree of Fashion-MNIST test images saved as PNG (lossless)."""
    images, labels = load_split(str(FMNIST_DIR), "test")
    picked = {}
    for split, offset in (("train", 0), ("val", 100)):
        for c in classes:
            idx = np.nonzero(labels == c)[0][offset:offset + per_class]
            folder = tmp_path / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in idx:
                Image.fromarray(images[i]).save(folder / f"{i:05d}.png")
            picked.setdefault(split, []).extend(sorted(idx))
    return picked


@needs_fmnist
def test_imagefolder_reads_the_same_pixels_and_labels(tmp_path):
    picked = make_folder(tmp_path)
    recipe = fmnist(**{"data.kind": "imagefolder", "data.root": str(tmp_path), "data.val_split": "val",
                       "num_classes": 3, **AUGMENTED})
    val = build_dataset(recipe, split="val")
    assert val.classes == ("class_0", "class_1", "class_7") and len(val) == 9
    ref = build_dataset(fmnist(), split="val")
    for k, i in enumerate(picked["val"]):
        x, y = val[k]
        np.testing.assert_array_equal(x, ref[int(i)][0])
        assert y == k // 3
    # Training items depend on (seed, epoch, index in this dataset): repeatable, right shape.
    train = build_dataset(recipe, split="train")
    xa, _ = train.batch(range(9), epoch=4)
    np.testing.assert_array_equal(xa, build_dataset(recipe, split="train").batch(range(9), epoch=4)[0])
    assert xa.shape == (9, 1, 28, 28)


@needs_fmnist
def test_dataset_errors_name_the_folder_or_key(tmp_path):
    make_folder(tmp_path)
    with pytest.raises(SpecError, match="'num_classes': .* has 3 classes but model 'sknet_small' has 10"):
        build_dataset(fmnist(**{"data.kind": "imagefolder", "data.root": str(tmp_path)}), split="train")
    with pytest.raises(DatasetError, match=f"{tmp_path}/nope: no such folder"):
        build_dataset(fmnist(**{"data.kind": "imagefolder", "data.root": str(tmp_path),
                                "data.train_split": "nope", "num_classes": 3}))
    (tmp_path / "train" / "class_0" / "broken.png").write_bytes(b"not a png")
    ds = build_dataset(fmnist(**{"data.kind": "imagefolder", "data.root": str(tmp_path), "num_classes": 3}))
    with pytest.raises(DatasetError, match="broken.png: cannot decode image"):
        ds.batch(range(len(ds)))


@pytest.mark.skipif(FOOLBOX is None, reason="pip install --no-deps foolbox==3.3.4 (its ImageNet photos)")
def test_mindcv_pipeline_on_imagenet_photos(tmp_path):
    """RGB photos through the mindcv recipe's full train pipeline (bicubic RRC, flip, jitter, erasing)."""
    for photo in sorted(FOOLBOX.glob("imagenet_*.jpg"))[:6]:
        label = photo.stem.split("_")[2]
        for split in ("train", "val"):
            (tmp_path / split / label).mkdir(parents=True, exist_ok=True)
            (tmp_path / split / label / photo.name).write_bytes(photo.read_bytes())
    n = len(list((tmp_path / "train").iterdir()))
    recipe = load_recipe("mindcv_skresnext50_32x4d", {"data.root": str(tmp_path), "num_classes": n,
                                                      "data.size": 64, "data.re_prob": 1.0})
    train, val = build_dataset(recipe, split="train"), build_dataset(recipe, split="val")
    x, _ = train.batch(range(len(train)), epoch=0)
    assert x.shape == (len(train), 3, 64, 64) and x.dtype == np.float32
    assert (x == 0).all(axis=1).any(axis=(1, 2)).all()      # every image had a rectangle erased
    np.testing.assert_array_equal(x, train.batch(range(len(train)), epoch=0)[0])
    v, _ = val.batch(range(len(val)))
    assert v.shape == (len(val), 3, 64, 64) and np.isfinite(v).all()
    # Eval images are deterministic and unaugmented: no epoch dependence.
    np.testing.assert_array_equal(v, val.batch(range(len(val)), epoch=9)[0])


def test_uint8_jitter_and_table_normalisation_track_the_float_reference():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
    for i in range(20):
        got = T.color_jitter_u8(img, np.random.default_rng([i]), 0.4)
        ref = T.color_jitter(img, np.random.default_rng([i]), 0.4)
        assert got.dtype == np.uint8 and got.shape == img.shape
        # Same draws and order; each of the three steps rounds to whole levels (<= 1 each).
        assert np.abs(got.astype(np.float32) - ref).max() <= 3.0
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    np.testing.assert_array_equal(T.normalize_u8(img, mean, std), T.normalize(img, mean, std))


def test_encoded_jpeg_crops_decode_at_reduced_scale_only_when_they_shrink(tmp_path):
    from sknet.data.folder import Encoded

    yy, xx = np.mgrid[0:480, 0:640]
    smooth = np.stack([xx * 255 // 639, yy * 255 // 479, (xx + yy) * 255 // 1118], axis=2).astype(np.uint8)
    path = tmp_path / "a.jpg"
    Image.fromarray(smooth).save(path, quality=95)
    full = Image.open(path).convert("RGB")
    enc = Encoded(str(path), 3)
    assert enc.shape == (480, 640, 3)
    # A crop that shrinks less than 2x: full scale, the rows and columns the bicubic filter
    # reads (3 px per unit of shrink, +1, each side) cut out of the full decode, then resized.
    box = (40, 60, 300, 400)
    m = 3 * 400 / 224 + 1
    x0, y0, x1, y1 = math.floor(60 - m), math.floor(40 - m), math.ceil(460 + m), math.ceil(340 + m)
    ref = np.asarray(full.crop((x0, y0, x1, y1)).resize((224, 224), Image.BICUBIC,
                                                        box=(60 - x0, 40 - y0, 460 - x0, 340 - y0)))
    np.testing.assert_array_equal(enc.resized(box, 224, 224, Image.BICUBIC), ref)
    # Resizing the whole decoded image instead moves PIL's filter positions by float rounding
    # (they are computed from the image's origin): a level here and there, no more.
    whole = np.asarray(full.resize((224, 224), Image.BICUBIC, box=(60, 40, 460, 340))).astype(int)
    assert np.abs(ref.astype(int) - whole).max() <= 1
    # The whole image to 64 px: decoded at 1/4 scale, close to the full decode on a smooth image,
    # and the same on every call (what keeps both backends' batches identical).
    small = enc.resized((0, 0, 480, 640), 64, 64, Image.BICUBIC)
    ref = np.asarray(full.resize((64, 64), Image.BICUBIC)).astype(int)
    assert np.abs(small.astype(int) - ref).mean() < 2.0
    np.testing.assert_array_equal(small, Encoded(str(path), 3).resized((0, 0, 480, 640), 64, 64, Image.BICUBIC))


def _photo_like(height, width, seed):
    """A textured RGB image (gradients, a few shapes, noise): JPEG has work to do in every block."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx * yy) % 256], axis=2).astype(np.float32)
    base += 40 * np.sin(xx / 7.0)[..., None] * np.cos(yy / 11.0)[..., None]
    base += rng.normal(0, 12, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def _jpeg_variants(folder):
    """Files covering libjpeg's decode paths: 4:2:0, 4:4:4, progressive, greyscale; and a PNG."""
    img = Image.fromarray(_photo_like(375, 500, 0))
    files = {"420.jpg": dict(quality=90), "444.jpg": dict(quality=90, subsampling=0),
             "progressive.jpg": dict(quality=85, progressive=True)}
    for name, opts in files.items():
        img.save(folder / name, **opts)
    img.convert("L").save(folder / "grey.jpg", quality=90)
    Image.fromarray(_photo_like(97, 131, 1)).save(folder / "odd.jpg", quality=90)   # sizes off the 8/16 grid
    img.save(folder / "plain.png")
    return sorted(folder.iterdir())


def test_region_decode_gives_the_pil_paths_pixels(tmp_path, monkeypatch):
    """The C fast path (libjpeg-turbo region decode) and the PIL fallback: the same pixels."""
    from sknet.data import folder as F

    if F._jpeg is None:
        pytest.skip("sknet.data._jpeg is not built (python setup.py build_ext --inplace; needs libjpeg-turbo headers)")
    rng = np.random.default_rng(0)
    for path in _jpeg_variants(tmp_path):
        for channels in (3, 1):
            fast = F.Encoded(str(path), channels)
            # Colour files read as greyscale, and PNGs, stay with PIL (its luma, not libjpeg's).
            colour = path.name in ("420.jpg", "444.jpg", "progressive.jpg", "odd.jpg")
            assert (fast.data is not None) == (path.suffix == ".jpg" and (channels == 3 or not colour))
            with monkeypatch.context() as m:
                m.setattr(F, "_jpeg", None)
                slow = F.Encoded(str(path), channels)
                full = slow.array()
                crops = []
                for size, interp in ((224, "bicubic"), (64, "bilinear"), (40, "bicubic"), (16, "nearest")):
                    for _ in range(6):
                        box = T.random_resized_crop_box(fast.shape[0], fast.shape[1], rng)
                        crops.append((box, size, interp, T.resize_crop(slow, box, size, interp)))
            assert fast.shape == slow.shape == full.shape
            # Independent reference: PIL's own full decode.
            ref = np.asarray(Image.open(path).convert("L" if channels == 1 else "RGB"))
            np.testing.assert_array_equal(fast.array(), ref.reshape(full.shape))
            np.testing.assert_array_equal(full, ref.reshape(full.shape))
            for box, size, interp, want in crops:
                got = T.resize_crop(fast, box, size, interp)
                np.testing.assert_array_equal(got, want, err_msg=f"{path.name} {channels} {box} {size} {interp}")


def test_truncated_jpeg_is_an_error_naming_the_file(tmp_path):
    from sknet.data.folder import Encoded

    Image.fromarray(_photo_like(375, 500, 2)).save(tmp_path / "a.jpg", quality=90)
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 3])
    enc = Encoded(str(tmp_path / "cut.jpg"), 3)        # the header is intact
    with pytest.raises(DatasetError, match="cut.jpg"):
        enc.resized((300, 0, 75, 500), 64, 64, Image.BILINEAR)   # rows past the end of the data
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)
    with pytest.raises(DatasetError, match="junk.jpg"):
        Encoded(str(tmp_path / "junk.jpg"), 3).array()


def test_file_pipeline_takes_the_same_draws_and_tracks_the_array_pipeline(tmp_path):
    """TrainTransform on a file (PIL image from decode to normalisation) against the same
    transform on the decoded array: the same draws consumed, pixels within the resize's and
    the uint8 jitter's rounding."""
    from sknet.data.folder import Encoded

    path = tmp_path / "a.jpg"
    Image.fromarray(_photo_like(375, 500, 3)).save(path, quality=90)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    # 224 px from 375 x 500: no crop shrinks 2x, so both decode at full scale.
    tf = T.TrainTransform(224, mean, std, "random_resized", interpolation="bicubic", hflip=0.5, color_jitter=0.4,
                          re_prob=0.5)
    array = Encoded(str(path), 3).array()
    diffs = []
    for i in range(24):
        r1, r2 = T.item_rng(0, 0, i), T.item_rng(0, 0, i)
        x1, x2 = tf(Encoded(str(path), 3), r1), tf(array, r2)
        assert r1.random() == r2.random()
        levels = np.abs(x1 - x2) * (np.asarray(std, np.float32)[:, None, None] * 255)
        diffs.append(levels)
        # Erased rectangles (zeros) agree exactly: same draws.
        np.testing.assert_array_equal(x1 == 0, x2 == 0)
    levels = np.stack(diffs)
    # The file path resizes the crop's neighbourhood, the array path the whole image: PIL's
    # float filter positions may differ in a rounding (a few levels at a few pixels, measured
    # 0 on this image, <= 7 on photos); diverging draws would differ everywhere.
    assert levels.max() <= 8 and levels.mean() < 0.05


def test_normalize_u8_of_a_pil_image_is_normalize():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    img = np.random.default_rng(5).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    for bgr in (False, True):
        np.testing.assert_array_equal(T.normalize_u8(Image.fromarray(img), mean, std, bgr),
                                      T.normalize(img, mean, std, bgr))
    grey = img[:, :, :1]
    np.testing.assert_array_equal(T.normalize_u8(Image.fromarray(grey[:, :, 0]), (0.5,), (0.25,)),
                                  T.normalize(grey, (0.5,), (0.25,)))


def test_c_jitter_and_normalisation_give_the_pil_paths_values(tmp_path, monkeypatch):
    """TrainTransform from a file: the extension's one-pass jitter + normalisation against the
    PIL path (lookup tables, PIL's grey and blend, normalize_u8), value for value."""
    from sknet.data import folder as F

    if F._jpeg is None:
        pytest.skip("sknet.data._jpeg is not built (python setup.py build_ext --inplace; needs libjpeg-turbo headers)")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    files = [p for p in _jpeg_variants(tmp_path) if p.suffix == ".jpg"]
    for jitter, bgr, channels in ((0.4, False, 3), (0.9, True, 3), (0.0, False, 3), (0.4, False, 1)):
        m, s = (mean, std) if channels == 3 else ((0.5,), (0.25,))
        tf = T.TrainTransform(48, m, s, "random_resized", interpolation="bicubic", hflip=0.5, color_jitter=jitter,
                              re_prob=0.25, bgr=bgr)
        for i in range(12):
            path = str(files[i % len(files)])
            fast = tf(F.Encoded(path, channels), T.item_rng(1, 0, i))
            with monkeypatch.context() as patch:
                patch.setattr(F, "_jpeg", None)
                slow = tf(F.Encoded(path, channels), T.item_rng(1, 0, i))
            assert fast.dtype == np.float32 and fast.shape == (channels, 48, 48)
            np.testing.assert_array_equal(fast, slow, err_msg=f"{path} jitter {jitter} bgr {bgr} channels {channels}")


def test_uint8_items_normalised_as_the_step_does_are_the_float_items(tmp_path, monkeypatch):
    """What the trainers' loaders give (``u8=True``): uint8 CHW that ``normalize_batch`` turns into
    the float32 item bit for bit, through the C extension and the PIL path, RGB, BGR and grey;
    with random erasing (which works on normalised values) the item stays float32."""
    from sknet.data import folder as F
    from sknet.data import normalize_batch

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    files = [p for p in _jpeg_variants(tmp_path) if p.suffix == ".jpg"]
    decoders = [None] if F._jpeg is None else [F._jpeg, None]
    for decoder in decoders:
        monkeypatch.setattr(F, "_jpeg", decoder)
        for jitter, bgr, channels in ((0.4, False, 3), (0.9, True, 3), (0.4, False, 1)):
            m, s = (mean, std) if channels == 3 else ((0.5,), (0.25,))
            tf = T.TrainTransform(40, m, s, "random_resized", interpolation="bicubic", hflip=0.5,
                                  color_jitter=jitter, bgr=bgr)
            for i in range(6):
                enc = lambda: F.Encoded(str(files[i % len(files)]), channels)  # noqa: E731
                u8 = tf(enc(), T.item_rng(2, 0, i), u8=True)
                assert u8.dtype == np.uint8 and u8.shape == (channels, 40, 40)
                np.testing.assert_array_equal(normalize_batch(u8[None], m, s)[0], tf(enc(), T.item_rng(2, 0, i)))
            eval_tf = T.EvalTransform(40, m, s, 0.875, "bicubic", bgr)
            np.testing.assert_array_equal(normalize_batch(eval_tf(enc(), u8=True)[None], m, s)[0], eval_tf(enc()))
            erasing = T.TrainTransform(40, m, s, "random_resized", color_jitter=jitter, re_prob=0.5, bgr=bgr)
            assert erasing(enc(), T.item_rng(2, 0, 0), u8=True).dtype == np.float32


@needs_fmnist
def test_uint8_batches_of_an_in_memory_dataset_are_the_float_batches():
    from sknet.data import normalize_batch, step_normalization

    recipe = fmnist(**{**AUGMENTED, "data.re_prob": 0.0})
    ds = build_dataset(recipe)
    idx = list(range(100, 132))
    u8, y8 = ds.batch(idx, epoch=3, u8=True)
    x, y = ds.batch(idx, epoch=3)
    assert u8.dtype == np.uint8 and x.dtype == np.float32 and np.array_equal(y8, y)
    np.testing.assert_array_equal(normalize_batch(u8, *step_normalization(recipe, recipe.model_spec())), x)

"""One image pipeline for every backend: datasets, transforms and per-worker sharding.

``build_dataset(recipe, spec, split)`` gives an indexable dataset of
(float32 CHW image, int label); the trainers take uint8 batches (``u8=True``) and
normalise in the step (``step_normalization``). What an item looks like depends only on
(recipe seed, epoch, index), so PyTorch DataLoader workers and MindSpore
GeneratorDataset workers produce identical batches. The dataset holds plain data
and is picklable for loader worker processes.
"""
import numpy as np

from ..errors import SpecError
from .folder import Encoded, decode, scan
from .idx import FASHION_MNIST_CLASSES, DatasetError, load_split
from .sampler import epoch_batches, epoch_order, shard_indices, steps_per_epoch
from .transforms import EvalTransform, TrainTransform, item_rng, normalize_batch

__all__ = ["Dataset", "DatasetError", "build_dataset", "build_transform", "epoch_batches",
           "epoch_order", "normalize_batch", "shard_indices", "step_normalization", "steps_per_epoch"]


class Dataset:
    """Images with labels and a transform; ``ds[i]`` uses the epoch set by ``set_epoch``."""

    def __init__(self, images, labels, classes, transform, seed=0, paths=None, channels=1, name=""):
        # Either in-memory uint8 images (N, H, W[, C]) or file paths decoded on access.
        self.images, self.paths = images, paths
        self.labels = np.asarray(labels, np.int64)
        self.classes = tuple(classes)
        self.transform, self.seed, self.channels, self.name = transform, seed, channels, name
        self.epoch = 0

    def __len__(self):
        return len(self.labels)

    @property
    def num_classes(self):
        return len(self.classes)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def raw(self, index):
        """The undecoded-by-transform uint8 HWC image."""
        if self.paths is not None:
            return decode(self.paths[index], self.channels)
        img = self.images[index]
        if img.ndim == 2:
            img = img[:, :, None]
        if img.shape[2] != self.channels:
            img = np.repeat(img, self.channels, axis=2)
        return img

    def source(self, index):
        """What the transform starts from: an in-memory image, or a file decoded once the crop is known."""
        return Encoded(self.paths[index], self.channels) if self.paths is not None else self.raw(index)

    def item(self, index, epoch, u8=False):
        """(float32 CHW image, int label) of ``index`` as augmented in ``epoch``; with ``u8``, where
        the transform allows it (no random erasing), the uint8 CHW image before normalisation."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        x = self.transform(self.source(index), item_rng(self.seed, epoch, index), u8=u8)
        return x, int(self.labels[index])

    def __getitem__(self, index):
        return self.item(index, self.epoch)

    def batch(self, indices, epoch=None, u8=False):
        """Stacked (float32 NCHW, int64 N) for ``indices``; the same values as item-by-item. With
        ``u8``, uint8 NCHW where the transform allows it: ``normalize_batch`` of it is the float32 batch."""
        epoch = self.epoch if epoch is None else epoch
        items = [self.item(i, epoch, u8) for i in indices]
        return np.stack([x for x, _ in items]), np.array([y for _, y in items], np.int64)

    def subset(self, n):
        """The first ``n`` images only (small test runs)."""
        sub = Dataset(None if self.images is None else self.images[:n], self.labels[:n], self.classes,
                      self.transform, self.seed, None if self.paths is None else self.paths[:n],
                      self.channels, self.name)
        sub.epoch = self.epoch
        return sub


def input_settings(recipe, spec):
    """(size, crop_pct, interpolation, mean, std): the recipe's data values, else the spec's."""
    d, inp = recipe.data, spec.input
    pick = lambda value, default: default if value is None else value  # noqa: E731
    return (pick(d.size, inp.size), pick(d.crop_pct, inp.crop_pct), pick(d.interpolation, inp.interpolation),
            tuple(pick(d.mean, inp.mean)), tuple(pick(d.std, inp.std)))


def step_normalization(recipe, spec):
    """(mean, std), float32, per channel of the batches' order: what a train step applies to the
    uint8 batches of ``Dataset.batch(..., u8=True)`` as ``normalize_batch`` does (BGR models'
    batches come channel-reversed, and their mean and std are in BGR order already)."""
    _, _, _, mean, std = input_settings(recipe, spec)
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def build_transform(recipe, spec, train):
    size, crop_pct, interpolation, mean, std = input_settings(recipe, spec)
    bgr = spec.input.channel_order == "bgr"
    if not train:
        return EvalTransform(size, mean, std, crop_pct, interpolation, bgr)
    d = recipe.data
    return TrainTransform(size, mean, std, d.crop, d.scale, d.ratio, d.padding, interpolation, d.hflip,
                          d.color_jitter, d.re_prob, d.re_mode, crop_pct, bgr)


def build_dataset(recipe, spec=None, split="train", augment=None):
    """The recipe's ``train`` or ``val`` split (the names in ``data.train_split``/``val_split``).

    Training augmentation applies to the train split unless ``augment`` says otherwise.
    """
    from ..recipe import data_root

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    spec = spec if spec is not None else recipe.model_spec()
    if spec.input.in_chans not in (1, 3):
        raise SpecError(spec.source, "input.in_chans", "datasets give 1- or 3-channel images")
    name = recipe.data.train_split if split == "train" else recipe.data.val_split
    transform = build_transform(recipe, spec, split == "train" if augment is None else augment)
    root = data_root(recipe)
    if recipe.data.kind == "fashion_mnist":
        images, labels = load_split(str(root), name)
        ds = Dataset(images, labels, FASHION_MNIST_CLASSES, transform, recipe.seed,
                     channels=spec.input.in_chans, name=f"fashion_mnist/{name}")
    else:
        classes, samples = scan(root, name)
        ds = Dataset(None, [label for _, label in samples], classes, transform, recipe.seed,
                     paths=[path for path, _ in samples], channels=spec.input.in_chans, name=f"{root}/{name}")
    if ds.num_classes != spec.num_classes:
        raise SpecError(recipe.source, "num_classes",
                        f"{root}/{name} has {ds.num_classes} classes but model '{spec.name}' has "
                        f"{spec.num_classes} outputs (set num_classes in the recipe)")
    return ds

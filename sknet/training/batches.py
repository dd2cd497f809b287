"""Whole batches by index, for the backends' data loaders (their workers build batches, in order)."""
import numpy as np


class BatchSource:
    """Item k is the k-th batch of a fixed list as (NCHW images, labels): random access, in order.

    The images are uint8 wherever the transform leaves normalisation to the step (no random
    erasing): the adapters normalise them there (``sknet.data.step_normalization``), to the
    float32 values the pipeline would have given, with a quarter of the bytes to build,
    stack and move from the loader workers.
    """

    def __init__(self, dataset, batches, epoch, label_dtype=np.int64):
        self.dataset, self.batches, self.epoch = dataset, batches, epoch
        self.label_dtype = label_dtype

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, k):
        x, y = self.dataset.batch(self.batches[k], self.epoch, u8=True)
        return x, y.astype(self.label_dtype, copy=False)

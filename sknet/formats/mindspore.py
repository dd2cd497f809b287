"""MindSpore's .ckpt: serialised Checkpoint messages, one Value (tag, TensorProto) each.

Parsed by hand so that reading a .ckpt needs no MindSpore (converting a MindSpore run for
PyTorch users must not require installing MindSpore); writing uses MindSpore itself.
"""
import contextlib
import logging
import os

import numpy as np

from ..errors import CheckpointError
from .raw import MOMENTS, RawCheckpoint, checked_nbytes, contiguous, one_line, scalar_int

NAME, LABEL = "mindspore", "MindSpore"
# Scalars a MindSpore training checkpoint carries beside the parameters: the contract's, and
# those nn.Momentum and MindSpore's training wrappers (loss scaling, sink mode) save.
SCALARS = ("epoch", "step", "learning_rate", "global_step", "momentum", "scale_sense",
           "current_iterator_step", "last_overflow_iterator_step", "epoch_num", "step_num")
DTYPES = {"Int8": "i1", "UInt8": "u1", "Int16": "<i2", "UInt16": "<u2", "Int32": "<i4", "UInt32": "<u4",
          "Int64": "<i8", "UInt64": "<u8", "Float16": "<f2", "Float32": "<f4", "Float64": "<f8",
          "Bool": "?", "BFloat16": "bfloat16"}


class _Arena:
    """Reads byte ranges of a file into one aligned buffer: one copy of the data in memory.

    Views into the page cache (mmap) would count twice at peak once a writer copies them,
    and the protobuf offsets leave arrays unaligned; reading each tensor once into its own
    aligned slot avoids both. The ranges are disjoint parts of the file (the parser walks
    it once), so the buffer is never larger than the file.
    """

    def __init__(self, path, f, size):
        self.path, self.f, self.size = path, f, size
        self.spans = []  # (key, [(offset, nbytes)], dtype, shape)

    def add(self, key, chunks, dtype, shape):
        self.spans.append((key, chunks, dtype, shape))

    def load(self):
        slots, total = [], 0
        for _, chunks, _, _ in self.spans:
            slots.append(total)
            total += -(-sum(n for _, n in chunks) // 64) * 64
        arena = np.empty(total, np.uint8)
        out = {}
        for (key, chunks, dtype, shape), at in zip(self.spans, slots):
            nbytes = sum(n for _, n in chunks)
            pos = at
            for offset, n in chunks:
                self.f.seek(offset)
                if self.f.readinto(memoryview(arena[pos:pos + n])) != n:
                    raise CheckpointError(f"{self.path}: truncated inside '{one_line(key, 60)}'")
                pos += n
            raw = arena[at:at + nbytes]
            if dtype == "bfloat16":  # NumPy has no bfloat16; float32 holds each value exactly
                value = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                value = raw.view(dtype)
            out[key] = value.reshape(shape)
        return out


class _Protobuf:
    """Just enough of the protobuf wire format to walk MindSpore's checkpoint messages."""

    def __init__(self, path, f, size):
        self.path, self.f, self.size = path, f, size

    def fail(self, why="truncated"):
        raise CheckpointError(f"{self.path}: cannot read as a MindSpore checkpoint ({why})")

    def varint(self):
        value, shift = 0, 0
        while True:
            b = self.f.read(1)
            if not b:
                self.fail()
            value |= (b[0] & 0x7F) << shift
            if b[0] < 0x80:
                return value
            shift += 7
            if shift > 63:
                self.fail("bad varint")

    def int64(self):
        value = self.varint() & (2 ** 64 - 1)
        return value - 2 ** 64 if value >= 2 ** 63 else value

    def key(self):
        k = self.varint()
        return k >> 3, k & 7

    def length(self):
        n = self.varint()
        if self.f.tell() + n > self.size:
            self.fail()
        return n

    def text(self):
        return self.f.read(self.length()).decode("utf-8", "replace")

    def skip(self, wire):
        if wire == 0:
            self.varint()
        elif wire in (1, 5) and self.f.tell() + (8 if wire == 1 else 4) <= self.size:
            self.f.seek(8 if wire == 1 else 4, 1)
        elif wire == 2:
            self.f.seek(self.length(), 1)
        elif wire in (1, 5):
            self.fail()
        else:
            self.fail(f"wire type {wire}: not a checkpoint, or encrypted")


def _tensor(pb, end):
    """TensorProto: dims = 1 (int64, repeated), tensor_type = 2 (string), tensor_content = 3 (bytes)."""
    dims, ttype, content = [], None, None
    while pb.f.tell() < end:
        field, wire = pb.key()
        if field == 1 and wire == 0:
            dims.append(pb.int64())
        elif field == 1 and wire == 2:
            stop = pb.length() + pb.f.tell()
            while pb.f.tell() < stop:
                dims.append(pb.int64())
        elif field == 2 and wire == 2:
            ttype = pb.text()
        elif field == 3 and wire == 2:
            n = pb.length()
            content = (pb.f.tell(), n)
            pb.f.seek(n, 1)
        else:
            pb.skip(wire)
    return dims, ttype, content


def _values(pb, f, size):
    """{tag: [dims, type, [(offset, nbytes)]]}: tensors over 512 MB come as several Values of one tag."""
    values = {}
    while f.tell() < size:
        if size - f.tell() == 17 and f.read(7) == b"crc_num":  # crc_check=True trailer
            break
        field, wire = pb.key()
        if field != 1 or wire != 2:
            pb.fail(f"unexpected field {field} (wire type {wire}): not a checkpoint, or encrypted")
        end = pb.length() + f.tell()
        tag, tensor = None, None
        while f.tell() < end:
            field, wire = pb.key()
            if field == 1 and wire == 2:
                tag = pb.text()
            elif field == 2 and wire == 2:
                n = pb.length()
                tensor = _tensor(pb, f.tell() + n)
            elif field == 3:
                pb.fail("map parameters are not supported")
            else:
                pb.skip(wire)
        if tag is None or tensor is None or tensor[1] is None or tensor[2] is None:
            pb.fail("a value without name, type or data")
        dims, ttype, content = tensor
        if tag in values:
            values[tag][2].append(content)
        else:
            values[tag] = [dims, ttype, [content]]
    return values


def read(path):
    """Each tensor copied once (MindSpore's own loader holds the file, the parsed message and
    the tensors at once); every shape is checked against the bytes present before allocating."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        pb = _Protobuf(path, f, size)
        values = _values(pb, f, size)
        arena, strings = _Arena(path, f, size), {}
        for tag, (dims, ttype, chunks) in values.items():
            if ttype == "str":
                offset, n = chunks[0]
                f.seek(offset)
                # MindSpore stores a string as NumPy's fixed-width unicode: UTF-32.
                strings[tag] = f.read(n).decode("utf-32-le", "replace").rstrip("\x00")
                continue
            if ttype not in DTYPES:
                pb.fail(f"'{one_line(tag, 60)}' has unsupported type {one_line(ttype, 20)}")
            dtype = DTYPES[ttype]
            itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
            shape = tuple(dims)
            held = sum(n for _, n in chunks)
            if held != checked_nbytes(path, tag, shape, itemsize):
                pb.fail(f"'{one_line(tag, 60)}' holds {held} bytes for shape {one_line(shape, 60)} of {ttype}")
            arena.add(tag, chunks, dtype, shape)
        loaded = arena.load()
    tensors, moments, scalars = {}, {}, dict(strings)
    for name, value in loaded.items():
        if name.startswith(MOMENTS):
            moments[name[len(MOMENTS):]] = value
        elif name in SCALARS:
            scalars[name] = value
        else:
            tensors[name] = value
    for key in ("epoch", "step"):
        if key in scalars:
            scalars[key] = scalar_int(path, key, scalars[key])
    return RawCheckpoint(path, NAME, tensors, moments or None, scalars)


def write(tmp, tensors, momentum, scalars):
    import mindspore as ms

    def tensor(v):
        return ms.Tensor.from_numpy(contiguous(v))

    params = [{"name": k, "data": tensor(v)} for k, v in tensors.items()]
    append = None
    if momentum is not None:
        params += [{"name": MOMENTS + k, "data": tensor(v)} for k, v in momentum.items()]
        # nn.Momentum indexes a per-step lr array with global_step: resume where the run stopped.
        params.append({"name": "global_step", "data": tensor(np.array([scalars["step"]], np.int32))})
        append = {"epoch": int(scalars["epoch"]), "step": int(scalars["step"])}
        if scalars.get("recipe") is not None:
            # A string entry: MindSpore's loader returns it as a str, and converting the file
            # back to PyTorch then knows how the trainer grouped the parameters.
            append["recipe"] = str(scalars["recipe"])
    # MindSpore writes to its own '<name>.tmp' first: one left by a killed write goes now,
    # and one left by a failing write goes below.
    own = os.path.splitext(tmp)[0] + ".tmp"
    try:
        if os.path.exists(own):
            os.remove(own)
        with _quiet():
            ms.save_checkpoint(params, tmp, append_dict=append)
    finally:
        if os.path.exists(own):
            os.remove(own)


@contextlib.contextmanager
def _quiet():
    """MindSpore logs a failed save on stderr itself; the caller's one-line error says it instead."""
    try:
        from mindspore.log import _get_logger

        log = _get_logger()
    except (ImportError, AttributeError):  # a private API: without it, MindSpore's line stays
        yield
        return
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(level)

"""SK attention analysis as in the paper (Li et al., CVPR 2019, Sec. 4.3, Figs. 2-3).

The paper enlarges the object in an image by cropping the centre region and resizing it
back to the input size, then compares, per SK unit, the mean selection weight on the
large (dilated) kernel with that on the small one. This module holds everything that
does not depend on a framework: loading and enlarging images, the per-unit statistics,
the spatial "where the large kernel wins" map, the CSV and the figures. The backends'
``attention.py`` run the model and hand back what the SK units recorded.

Definitions (docs/attention.md explains them for users):

- branch mean ``attn_<branch>``: the softmax weight of that branch averaged over the
  unit's C channels, for one image at one scale;
- difference ``diff``: the branch mean of the large branch minus that of the small one
  (large/small by receptive field ``dilation * (kernel - 1) + 1``);
- map: per output pixel, mean over channels of ``a_large,c * V_large,c(y, x)`` minus the
  same for the small branch, where ``V`` are the branch outputs (after BN-ReLU) and ``a``
  the selection weights: the unit's output is ``sum_m a_m V_m``, so the map says which
  branch contributes more to the unit's (channel-mean) output at each place.
"""
import csv
import re
from collections import namedtuple
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .atomic import atomic_write
from .errors import SKNetError
from .tree import sk_units

# What a backend's capture returns per SK unit: weights (B, M, C) and, for the units
# asked for, the M branch outputs (B, C, H, W) (else None).
Capture = namedtuple("Capture", "weights branches")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# foolbox's sample photos are named <dataset>_<index>_<label>.<ext>, e.g. imagenet_00_243.jpg.
_LABELLED = re.compile(r"^[A-Za-z][A-Za-z0-9]*_\d+_(\d+)$")


def unit_paths(spec):
    """Paths of the spec's SK units in build order, e.g. ``layer2.3.conv1``."""
    return [u.path for u in sk_units(spec)]


def sk_cells(model, sk_class):
    """``{unit path: SK cell}`` for every unit the spec's tree lists, in build order.

    Framework-free: walks attributes and integer indices (nn.Sequential, CellList) of
    ``model`` along each path and checks the cell found is a ``sk_class``.
    """
    cells = {}
    for path in unit_paths(model.spec):
        cell = model
        for part in path.split("."):
            cell = cell[int(part)] if part.isdigit() else getattr(cell, part, None)
            if cell is None:
                break
        if not isinstance(cell, sk_class):
            raise SKNetError(f"model has no SK unit at '{path}' although its spec '{model.spec.name}' lists one")
        cells[path] = cell
    return cells


@contextmanager
def hooked(cells, keep_branches=(), keep=lambda output: output):
    """Forward hooks on every SK unit's attention module and, for the units in
    ``keep_branches``, on its branch paths; yields ``{unit path: {"logits": t, i: t}}``
    filled by the next forward pass, each output passed through ``keep``. Removed on exit.

    Framework-free: PyTorch modules and MindSpore cells (PYNATIVE) both take
    ``register_forward_hook(fn(module, inputs, output))`` and return a removable handle.
    """
    seen = {path: {} for path in cells}
    handles = []

    def store(path, key):
        return lambda _module, _inputs, output: seen[path].__setitem__(key, keep(output))

    for path, cell in cells.items():
        handles.append(cell.attn.register_forward_hook(store(path, "logits")))
        if path in keep_branches:
            handles += [branch.register_forward_hook(store(path, i)) for i, branch in enumerate(cell.paths)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def paper_name(path):
    """The paper's name of a unit: stage conv2..conv5 is our layer1..layer4, blocks count from 1.

    ``layer2.3.conv1`` -> ``SK_3_4`` (the paper's SK_3_4 is the 4th block of conv3).
    """
    stage, block = path.split(".")[:2]
    return f"SK_{int(stage[len('layer'):]) + 1}_{int(block) + 1}"


def branch_names(spec):
    names = [f"{b.kernel_size}x{b.kernel_size}_d{b.dilation}" for b in spec.sk.branches]
    if len(set(names)) != len(names):
        raise SKNetError(f"{spec.source or spec.name}: 'sk.branches' has two identical branches; "
                         "attention analysis needs branches of different receptive fields")
    return names


def large_small(spec):
    """Indices of the branches with the largest and the smallest receptive field."""
    if spec.sk.num_branches < 2:
        raise SKNetError(f"{spec.source or spec.name}: 'sk.branches' has one branch: nothing to select between")
    extent = [b.dilation * (b.kernel_size - 1) + 1 for b in spec.sk.branches]
    large, small = int(np.argmax(extent)), int(np.argmin(extent))
    if extent[large] == extent[small]:
        raise SKNetError(f"{spec.source or spec.name}: all SK branches see {extent[large]}x{extent[large]} pixels; "
                         "'large' and 'small' are undefined")
    return large, small


# ---------------------------------------------------------------- images

def label_from_name(path, num_classes=None):
    """The class in a foolbox-style file name (``imagenet_00_243.jpg`` -> 243), else None."""
    m = _LABELLED.match(Path(path).stem)
    if not m:
        return None
    label = int(m.group(1))
    return label if num_classes is None or label < num_classes else None


def expand_images(paths):
    """Files as given, folders as their image files (sorted); missing paths raise."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise SKNetError(f"{p}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise SKNetError(f"{p}: no such image file or folder")
    return out


def load_image(path, spec):
    """A PIL image in the mode the spec's input takes (RGB for 3 channels, L for 1)."""
    from PIL import Image, UnidentifiedImageError

    mode = {1: "L", 3: "RGB"}.get(spec.input.in_chans)
    if mode is None:
        raise SKNetError(f"model '{spec.name}' takes {spec.input.in_chans} input channels; "
                         "images can only be fed to 1- or 3-channel models")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert(mode)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise SKNetError(f"{path}: cannot read as an image ({err})") from None


def enlarge(img, spec, scale, size=None):
    """The model's input for ``img`` with its centre enlarged ``scale`` times, as uint8 (H, W[, C]).

    Scale 1 is the usual evaluation crop (shorter side resized to size / crop_pct, centre
    crop of ``size``); scale s keeps the centre 1/s of that crop. Both are done as one
    resampling of the original pixels (PIL ``resize`` with a box), so a larger scale is
    not a blurred copy of a smaller one.
    """
    from PIL import Image

    if scale < 1:
        raise SKNetError(f"scale {scale}: only enlargements (scale >= 1) are defined")
    size = size or spec.input.size
    w, h = img.size
    side = min(w, h) * spec.input.crop_pct / scale
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                "nearest": Image.NEAREST}[spec.input.interpolation]
    return np.asarray(img.resize((size, size), resample, box=box))


def normalise(pixels, spec):
    """uint8 (H, W[, C]) -> float32 (C, H, W) with the spec's mean and std (and channel order)."""
    x = pixels.astype(np.float32) / 255.0
    x = x[..., None] if x.ndim == 2 else x
    if spec.input.channel_order == "bgr" and x.shape[2] == 3:
        x = x[..., ::-1]
    mean = np.asarray(spec.input.mean, np.float32)
    std = np.asarray(spec.input.std, np.float32)
    return np.ascontiguousarray(((x - mean) / std).transpose(2, 0, 1))


# ---------------------------------------------------------------- statistics

def branch_means(weights):
    """(B, M, C) selection weights -> (B, M): each branch's weight averaged over channels."""
    return weights.astype(np.float64).mean(axis=2)


def contribution_map(weights, branches, large, small):
    """(B, H, W): channel-mean of a_large * V_large minus that of a_small * V_small."""
    def part(i):
        return np.einsum("bc,bchw->bhw", weights[:, i].astype(np.float64), branches[i].astype(np.float64))

    return (part(large) - part(small)) / weights.shape[2]


@dataclass
class Analysis:
    """Everything measured for N images x S scales x U units (M branches)."""
    spec: object
    images: List[Path]
    labels: List[Optional[int]]
    scales: Tuple[float, ...]
    units: List[str]
    branches: List[str]
    large: int
    small: int
    means: np.ndarray               # (N, S, U, M)
    preds: np.ndarray               # (N, S) argmax class
    size: int                       # input size the images were enlarged to
    map_units: List[str] = field(default_factory=list)
    maps: Dict[str, np.ndarray] = field(default_factory=dict)  # unit -> (N, S, h, w) float32
    channel_unit: Optional[str] = None
    channel_weights: Optional[np.ndarray] = None  # (N, S, C) float32: large-branch weight per channel
    note: str = ""

    def pixels(self, i):
        """(S, H, W[, C]) uint8: image ``i`` as fed to the model at each scale, before normalising.

        Made again from the file rather than kept, so that memory does not grow with the images.
        """
        img = load_image(self.images[i], self.spec)
        return np.stack([enlarge(img, self.spec, sc, self.size) for sc in self.scales])

    @property
    def diffs(self):
        return self.means[..., self.large] - self.means[..., self.small]


def default_map_units(spec):
    """The last SK unit of each stage: one map per resolution."""
    last = {}
    for path in unit_paths(spec):
        last[path.split(".")[0]] = path
    return list(last.values())


def default_channel_unit(spec):
    """The last SK unit of the second stage: for SKNet-50 the paper's SK_3_4, whose channels Fig. 2 plots."""
    return default_map_units(spec)[min(1, len(spec.stages.depths) - 1)]


def resolve_units(spec, map_units=None, channel_unit=None):
    """(map units, channel unit) with the defaults filled in; a name the spec lacks raises."""
    units = unit_paths(spec)
    map_units = default_map_units(spec) if map_units is None else list(map_units)
    channel_unit = channel_unit or default_channel_unit(spec)
    for flag, asked in (("--map-units", map_units), ("--channel-unit", [channel_unit])):
        unknown = [u for u in asked if u not in units]
        if unknown:
            raise SKNetError(f"{flag}: {', '.join(unknown)} is not an SK unit of '{spec.name}' "
                             f"(units: {', '.join(units)})")
    return map_units, channel_unit


def analyse(model, capture, spec, images, scales, size=None, map_units=None, channel_unit=None, note=""):
    """Run ``capture(model, x, keep_branches)`` on every image at every scale (one batch per image)."""
    units = unit_paths(spec)
    large, small = large_small(spec)
    map_units, channel_unit = resolve_units(spec, map_units, channel_unit)
    images = [Path(p) for p in images]
    n, s = len(images), len(scales)
    means = np.zeros((n, s, len(units), spec.sk.num_branches))
    preds = np.zeros((n, s), np.int64)
    maps = {u: [] for u in map_units}
    channels = []
    for i, path in enumerate(images):
        img = load_image(path, spec)
        px = np.stack([enlarge(img, spec, sc, size) for sc in scales])
        logits, rec = capture(model, np.stack([normalise(p, spec) for p in px]), set(map_units))
        preds[i] = logits.argmax(axis=1)
        for j, u in enumerate(units):
            means[i, :, j] = branch_means(rec[u].weights)
        channels.append(rec[channel_unit].weights[:, large].astype(np.float32))
        for u in map_units:
            maps[u].append(contribution_map(rec[u].weights, rec[u].branches, large, small).astype(np.float32))
    return Analysis(spec, images, [label_from_name(p, spec.num_classes) for p in images], tuple(scales),
                    units, branch_names(spec), large, small, means, preds, size or spec.input.size, map_units,
                    {u: np.stack(v) for u, v in maps.items()}, channel_unit, np.stack(channels), note)


# ---------------------------------------------------------------- output

def _atomic(path, write, binary=False):
    """``write(file)`` into ``path`` through the one atomic writer, ``sknet.atomic.atomic_write``."""
    def to(tmp):
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)

    atomic_write(path, to)


def csv_header(spec):
    return (["image", "class", "scale", "unit", "paper_unit"]
            + [f"attn_{b}" for b in branch_names(spec)] + ["diff", "pred"])


def csv_rows(a):
    """One row per image x scale x unit, in that nesting order."""
    diffs = a.diffs
    for i, path in enumerate(a.images):
        for k, scale in enumerate(a.scales):
            for j, unit in enumerate(a.units):
                yield ([path.name, "" if a.labels[i] is None else a.labels[i], f"{scale:g}", unit,
                        paper_name(unit)] + [f"{v:.9g}" for v in a.means[i, k, j]]
                       + [f"{diffs[i, k, j]:.9g}", int(a.preds[i, k])])


def write_csv(a, path):
    def write(f):
        w = csv.writer(f)
        w.writerow(csv_header(a.spec))
        w.writerows(csv_rows(a))

    _atomic(path, write)


def require_matplotlib():
    """Figures need matplotlib (the ``plots`` extra): checked before any work is done."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SKNetError("figures need matplotlib: pip install 'sknet[plots]'") from None


def _figure(width, height, layout=None):
    # The object API with an Agg canvas: no pyplot, no global backend switch, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path, dpi, palette=False):
    """PNG of ``fig``; ``palette``: 256 adaptive colours, a quarter of the bytes for figures of photos."""
    if not palette:
        _atomic(path, lambda f: fig.savefig(f, format="png", dpi=dpi), binary=True)
        return
    from PIL import Image

    fig.set_dpi(dpi)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    img = Image.fromarray(np.ascontiguousarray(rgb)).quantize(256, method=Image.Quantize.FASTOCTREE)
    _atomic(path, lambda f: img.save(f, format="PNG", optimize=True), binary=True)


def _draw_differences(ax, a, diffs, spread, fontsize=8):
    """Grouped bars: per SK unit, ``diffs`` (N, S, U) averaged over N, one bar per scale."""
    n_units, n_scales = len(a.units), len(a.scales)
    width = 0.8 / n_scales
    x = np.arange(n_units)
    for k, scale in enumerate(a.scales):
        err = diffs[:, k].std(axis=0) if spread else None
        ax.bar(x + (k - (n_scales - 1) / 2) * width, diffs[:, k].mean(axis=0), width, yerr=err, capsize=2,
               label=f"{scale:g}x", error_kw={"elinewidth": 0.8})
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(x)
    ax.set_xticklabels([paper_name(u) for u in a.units], rotation=60 if n_units <= 16 else 90,
                       fontsize=fontsize if n_units <= 16 else fontsize - 2)
    ax.set_ylabel(f"mean attention\n{a.branches[a.large]} - {a.branches[a.small]}", fontsize=fontsize)
    ax.tick_params(axis="y", labelsize=fontsize)
    ax.legend(title="centre enlarged", fontsize=fontsize - 1, title_fontsize=fontsize - 1)


def channel_group(channels):
    """Successive channels averaged per point: 16 as in the paper's Fig. 2, fewer for narrow units."""
    return 16 if channels >= 128 else max(1, channels // 8)


def _draw_channels(ax, a, i, fontsize=7):
    """The paper's Fig. 2 (bottom left): large-kernel attention along the channels, one line per scale."""
    w = a.channel_weights[i]                    # (S, C)
    g = channel_group(w.shape[1])
    c = w.shape[1] // g * g
    for k, scale in enumerate(a.scales):
        ax.plot(np.arange(c // g) * g, w[k, :c].reshape(-1, g).mean(axis=1), marker=".", label=f"{scale:g}x")
    ax.set_xlabel(f"channel of {paper_name(a.channel_unit)} ({a.channel_unit}), mean of {g}", fontsize=fontsize)
    ax.set_ylabel(f"attention on {a.branches[a.large]}", fontsize=fontsize)
    ax.tick_params(labelsize=fontsize)
    ax.legend(fontsize=fontsize - 1)


def plot_differences(a, path, dpi=100):
    """The paper's Fig. 3 view: per SK unit, mean (large - small) over the images, one bar per scale."""
    fig = _figure(max(6.0, 0.5 * len(a.units) + 2.0), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    _draw_differences(ax, a, a.diffs, spread=len(a.images) > 1)
    ax.set_title(f"{a.spec.name}: {len(a.images)} image(s), mean +- std over images" + a.note, fontsize=9)
    fig.tight_layout()
    _save(fig, path, dpi)


def plot_image(a, i, path, dpi=80):
    """Image ``i``: per scale (rows) the input and each map unit's large-minus-small contribution
    over it; below, the paper's Fig. 2 panels for this image: per-unit difference and per-channel
    attention of the channel unit."""
    n_scales, n_maps = len(a.scales), len(a.map_units)
    cols = 1 + n_maps
    width = max(1.8 * cols, 7.0)
    fig = _figure(width, 1.9 * n_scales + 2.8, layout="constrained")
    # Two sub-figures, so the panels below do not stretch the columns of images above.
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.9 * n_scales, 2.4])
    diffs, pixels = a.diffs[i], a.pixels(i)
    for k, scale in enumerate(a.scales):
        px = pixels[k]
        h, w = px.shape[:2]
        ax = top.add_subplot(n_scales, cols, k * cols + 1)
        ax.imshow(px, cmap="gray" if px.ndim == 2 else None)
        ax.set_title(f"{scale:g}x", fontsize=8)
        ax.axis("off")
        gray = px if px.ndim == 2 else px.mean(axis=2)
        for j, unit in enumerate(a.map_units):
            m = a.maps[unit][i, k]
            # One symmetric scale per unit across the scales, so rows compare; 0 is white.
            vmax = float(np.abs(a.maps[unit][i]).max()) or 1.0
            ax = top.add_subplot(n_scales, cols, k * cols + 2 + j)
            ax.imshow(gray, cmap="gray", extent=(0, w, h, 0))
            ax.imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax, alpha=0.6, extent=(0, w, h, 0),
                      interpolation="bilinear")
            d = diffs[k, a.units.index(unit)]
            ax.set_title(f"{paper_name(unit)} {m.shape[0]}x{m.shape[1]}\ndiff {d:+.4f}, |map|<={vmax:.2g}",
                         fontsize=7)
            ax.axis("off")
    left, right = bottom.subplots(1, 2)
    _draw_differences(left, a, diffs[None], spread=False, fontsize=7)
    _draw_channels(right, a, i)
    label = "" if a.labels[i] is None else f" (class {a.labels[i]})"
    fig.suptitle(f"{a.images[i].name}{label}: red = large kernel contributes more, blue = small" + a.note,
                 fontsize=8)
    _save(fig, path, dpi, palette=True)


def map_file_names(images):
    """``<stem>.png`` per image, numbered where two images share a stem."""
    stems = [Path(p).stem for p in images]
    return [f"{s}.png" if stems.count(s) == 1 else f"{s}_{i}.png" for i, s in enumerate(stems)]


def summary(a):
    """Per unit: mean difference at each scale over the images, and how many images rose."""
    diffs = a.diffs
    lines = [f"{'unit':<18}{'paper':<8}" + "".join(f"{f'{s:g}x':>10}" for s in a.scales)
             + ("   rose 1st->last" if len(a.scales) > 1 else "")]
    for j, unit in enumerate(a.units):
        row = f"{unit:<18}{paper_name(unit):<8}" + "".join(f"{diffs[:, k, j].mean():>+10.4f}"
                                                             for k in range(len(a.scales)))
        if len(a.scales) > 1:
            row += f"   {int((diffs[:, -1, j] > diffs[:, 0, j]).sum())}/{len(a.images)}"
        lines.append(row)
    return "\n".join(lines)

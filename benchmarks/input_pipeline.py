"""Training input pipelines side by side: sknet.data, mindspore.dataset's C++ ops, plain PIL.

    python benchmarks/input_pipeline.py --repeat 3            # 200 images, best of 3, 1 and 2 workers
    python benchmarks/input_pipeline.py --images 16 --passes 1 --workers 1 --size 64   # smoke

One folder (the foolbox ImageNet photos, plus scikit-image's if installed, resized to
500x375 and saved as JPEG quality 90), one recipe: RandomResizedCrop (bicubic, scale
0.08-1, ratio 3/4-4/3), horizontal flip 0.5, colour jitter 0.4 (brightness, contrast,
saturation) and ImageNet normalisation. Each pipeline runs in its own process pinned to
as many cores as it has workers (``taskset``; every library held to one thread per
core), so figures are images/s per core. "sknet" is the trainers' path (uint8 NCHW batches
from sknet.data through the PyTorch adapter's DataLoader, normalised to float32 as the train
step does, in the consuming process), decoding JPEGs through
the ``sknet.data._jpeg`` extension where it is built; "sknet-pil" is the same pipeline with
PIL decoding (the fallback, same pixels). All give normalised float32 CHW batches.
"""
import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import median_run  # benchmarks/ is sys.path[0] when run as a script

PIPELINES = ("sknet", "sknet-pil", "mindspore", "pil")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
JITTER, SCALE, RATIO = 0.4, (0.08, 1.0), (3 / 4, 4 / 3)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=200, help="images per pass")
    p.add_argument("--passes", type=int, default=3, help="timed passes; the best counts")
    p.add_argument("--repeat", type=int, default=1, help="runs of each pipeline, interleaved; the median counts")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (cores) to time")
    p.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=PIPELINES)
    p.add_argument("--folder", help="an existing ImageFolder root/train/<class>/*.jpg (else built in a temp dir)")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--stages", action="store_true",
                   help="instead: ms per image of each step on one core, sknet's against mindspore's ops called one by one")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error(f"--repeat must be >= 1, got {args.repeat}")
    return args


# --- the folder -----------------------------------------------------------------------------------

def shipped_photos():
    """(label, PIL image) of the photos shipped with installed packages, never downloaded."""
    from PIL import Image

    found = []
    spec = importlib.util.find_spec("foolbox")
    if spec and spec.origin:
        # foolbox is installed without its dependencies, only for its photos: locate, don't import.
        for path in sorted((Path(spec.origin).parent / "data").glob("imagenet_*.jpg")):
            found.append((f"n{int(path.stem.split('_')[2]):04d}", Image.open(path)))
    if importlib.util.find_spec("skimage"):
        from skimage import data

        for name in ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left"):
            try:
                found.append((f"skimage_{name}", Image.fromarray(getattr(data, name)())))
            except Exception:  # an image whose file scikit-image would have to download
                continue
    return found


def build_folder(root, count):
    """``root/train/<label>/*.jpg``: ``count`` files cycling through the shipped photos."""
    from PIL import Image

    photos = shipped_photos()
    if not photos:
        raise SystemExit("no shipped photos: pip install --no-deps foolbox==3.3.4 (its 20 ImageNet photos)")
    for k in range(count):
        label, img = photos[k % len(photos)]
        folder = Path(root) / "train" / label
        folder.mkdir(parents=True, exist_ok=True)
        img.convert("RGB").resize((500, 375), Image.BICUBIC).save(folder / f"{k:05d}.jpg", quality=90)
    return root


# --- the pipelines, each timed in a pinned child process ------------------------------------------

def pass_times(batches, steps, passes):
    """Seconds of each of ``passes`` passes of ``steps`` batches, after an untimed warm-up pass.

    One stream of batches, timed at their arrival: every pipeline here prefetches in the
    background, so a pass is the time between the arrivals that close consecutive passes,
    and start-up (worker processes, threads) falls into the warm-up pass.
    """
    marks = []
    for k, _ in enumerate(batches, 1):
        if k % steps == 0:
            marks.append(time.perf_counter())
        if k == steps * (passes + 1):
            break
    return [b - a for a, b in zip(marks, marks[1:])]


def sknet_source(folder, size):
    from sknet.data import Dataset
    from sknet.data.folder import scan
    from sknet.data.transforms import TrainTransform

    classes, samples = scan(folder, "train")
    tf = TrainTransform(size, MEAN, STD, "random_resized", SCALE, RATIO, interpolation="bicubic",
                        hflip=0.5, color_jitter=JITTER)
    return Dataset(None, [y for _, y in samples], classes, tf, seed=0, paths=[p for p, _ in samples],
                   channels=3, name=folder)


def run_sknet(args, workers, decoder="auto"):
    import torch

    from sknet.data import folder

    if decoder == "pil":
        folder._jpeg = None        # the fallback path, as where the extension is not built

    from sknet.data import epoch_batches
    from sknet.training.batches import BatchSource

    torch.set_num_threads(1)
    ds = sknet_source(args.folder, args.size)
    per_pass = epoch_batches(len(ds), 1, 0, args.batch, 0, 0)
    order = [b for epoch in range(args.passes + 1) for b in epoch_batches(len(ds), 1, 0, args.batch, 0, epoch)]
    # The trainers' loader (backends/torch/train.py): whole batches built by worker processes.
    loader = torch.utils.data.DataLoader(BatchSource(ds, order, 0), batch_size=None, shuffle=False,
                                         num_workers=workers if workers > 1 else 0,
                                         multiprocessing_context="fork" if workers > 1 else None)
    # The loader gives uint8 batches; the train step normalises them (backends/torch/train.py),
    # here in the consuming process, so its cost counts.
    mean = torch.tensor(MEAN, dtype=torch.float32).reshape(1, -1, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).reshape(1, -1, 1, 1)
    scale = torch.tensor(1 / 255, dtype=torch.float32)
    batches = (x.to(torch.float32).mul_(scale).sub_(mean).div_(std) for x, _ in loader)
    return pass_times(batches, len(per_pass), args.passes)


def run_mindspore(args, workers):
    import mindspore.dataset as ds
    import mindspore.dataset.vision as vision
    from mindspore.dataset.vision import Inter

    ds.config.set_num_parallel_workers(workers)
    ds.config.set_seed(0)
    ops = [vision.RandomCropDecodeResize(args.size, scale=SCALE, ratio=RATIO, interpolation=Inter.BICUBIC),
           vision.RandomHorizontalFlip(0.5),
           vision.RandomColorAdjust(JITTER, JITTER, JITTER),
           vision.Normalize([m * 255 for m in MEAN], [s * 255 for s in STD]),
           vision.HWC2CHW()]
    data = ds.ImageFolderDataset(str(Path(args.folder) / "train"), shuffle=True, decode=False,
                                 num_parallel_workers=workers)
    data = data.map(ops, input_columns="image", num_parallel_workers=workers)
    data = data.batch(args.batch, drop_remainder=True, num_parallel_workers=workers)
    steps = len(data)
    data = data.repeat(args.passes + 1)
    batches = (x for x, _ in data.create_tuple_iterator(num_epochs=1, output_numpy=True)
               if x.shape == (args.batch, 3, args.size, args.size))
    return pass_times(batches, steps, args.passes)


def run_pil(args, workers):
    """The textbook PIL pipeline (as torchvision's transforms do it), with JPEG draft decoding."""
    import math
    import random
    from multiprocessing import get_context

    import numpy as np
    from PIL import Image, ImageEnhance

    from sknet.data.folder import scan

    _, samples = scan(args.folder, "train")
    size = args.size
    mean, std = np.array(MEAN, np.float32) * 255, np.array(STD, np.float32) * 255

    def load(path):
        img = Image.open(path)
        img.draft("RGB", (size, size))
        img = img.convert("RGB")
        w, h = img.size
        for _ in range(10):
            area = w * h * random.uniform(*SCALE)
            aspect = math.exp(random.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
            cw, ch = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                break
        else:
            cw, ch = min(w, h), min(w, h)
        left, top = random.randint(0, w - cw), random.randint(0, h - ch)
        img = img.resize((size, size), Image.BICUBIC, box=(left, top, left + cw, top + ch))
        if random.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        ops = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]
        random.shuffle(ops)
        for op in ops:
            img = op(img).enhance(random.uniform(1 - JITTER, 1 + JITTER))
        return ((np.asarray(img, np.float32) - mean) / std).transpose(2, 0, 1)

    steps = len(samples) // args.batch

    def make_batch(k):
        k %= steps
        items = samples[k * args.batch:(k + 1) * args.batch]
        return np.stack([load(p) for p, _ in items]), np.array([y for _, y in items])

    total = steps * (args.passes + 1)
    global _PIL_BATCH
    _PIL_BATCH = make_batch   # forked workers inherit it: a local function does not pickle
    pool = get_context("fork").Pool(workers) if workers > 1 else None
    try:
        batches = pool.imap(_pil_batch, range(total)) if pool else map(make_batch, range(total))
        return pass_times((x for x, _ in batches if x.shape == (args.batch, 3, size, size)), steps, args.passes)
    finally:
        if pool:
            pool.close()


_PIL_BATCH = None


def _pil_batch(k):
    return _PIL_BATCH(k)


def stage_times(args):
    """{pipeline: {stage: ms per image}}: each step timed alone over the folder, best of the passes."""
    import numpy as np
    from PIL import Image

    from sknet.data import folder as F
    from sknet.data import transforms as T

    _, samples = F.scan(args.folder, "train")
    paths = [p for p, _ in samples][:args.images]
    size, n = args.size, len(paths)
    resample = T.RESAMPLE["bicubic"]
    mean32, std32 = np.asarray(MEAN, np.float32).tobytes(), np.asarray(STD, np.float32).tobytes()

    def sknet_pass(epoch):
        fast = F._jpeg is not None and F.resize_order() is not None
        last = ("jitter (C)", "append") if F._jpeg is not None else ("jitter", "to CHW")
        acc = dict.fromkeys(("read + header", "region decode", "resize (C, flipping)" if fast else "resize", "flip")
                            + last, 0.0)
        items = []
        for i, path in enumerate(paths):
            rng = T.item_rng(0, epoch, i)
            t0 = time.perf_counter()
            enc = F.Encoded(path, 3)
            top, left, h, w = T.random_resized_crop_box(enc.shape[0], enc.shape[1], rng, SCALE, RATIO)
            t1 = time.perf_counter()
            # enc.image's steps, apart (scale 1: no crop here shrinks 2x at 224 px).
            y0, y1 = F._region(top, top + h, size, enc.shape[0])
            x0, x1 = F._region(left, left + w, size, enc.shape[1])
            rect, box = (y0, x0, y1 - y0, x1 - x0), (left - x0, top - y0, left + w - x0, top + h - y0)
            src = enc._region_bytes(1, rect) if fast else enc._decode(1, rect)
            t2 = time.perf_counter()
            flip = rng.random() < 0.5
            if fast:
                pil = F.resized_bytes(src, rect[3], rect[2], 3, box, size, size, resample, flip)
                t3 = t4 = time.perf_counter()
            else:
                pil = src.resize((size, size), resample, box=box)
                t3 = time.perf_counter()
                pil = pil.transpose(Image.FLIP_LEFT_RIGHT) if flip else pil
                t4 = time.perf_counter()
            if F._jpeg is not None:        # one C pass (what TrainTransform runs with the extension)
                factors, order = T.jitter_draws(rng, JITTER)
                x = np.empty((3, size, size), np.uint8)     # the loaders' uint8: the step normalises
                F._jpeg.finish(pil.tobytes(), size * size, 3, bytes(int(k) for k in order),
                               np.asarray(factors, np.float32).tobytes(), mean32, std32, False, x)
                t5 = time.perf_counter()
            else:
                pil = T.color_jitter_pil(pil, rng, JITTER)
                t5 = time.perf_counter()
                x = T.to_chw(pil)
            items.append(x)
            t6 = time.perf_counter()
            for key, a, b in zip(acc, (t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6)):
                acc[key] += b - a
        batches = n // args.batch * args.batch
        t0 = time.perf_counter()
        stacked = [np.stack(items[k:k + args.batch]) for k in range(0, batches, args.batch)]
        acc["collate"] = (time.perf_counter() - t0) * n / batches
        t0 = time.perf_counter()
        for x in stacked:
            T.normalize_batch(x, MEAN, STD)
        acc["normalise (the step's)"] = (time.perf_counter() - t0) * n / batches
        return acc

    def mindspore_pass(epoch):
        import mindspore.dataset as ds
        import mindspore.dataset.vision as vision
        from mindspore.dataset.vision import Inter

        ds.config.set_seed(epoch)
        ops = {"read": None,
               "RandomCropDecodeResize": vision.RandomCropDecodeResize(size, scale=SCALE, ratio=RATIO,
                                                                       interpolation=Inter.BICUBIC),
               "RandomHorizontalFlip": vision.RandomHorizontalFlip(0.5),
               "RandomColorAdjust": vision.RandomColorAdjust(JITTER, JITTER, JITTER),
               "Normalize": vision.Normalize([m * 255 for m in MEAN], [s * 255 for s in STD]),
               "HWC2CHW": vision.HWC2CHW()}
        acc = dict.fromkeys(ops, 0.0)
        for path in paths:
            t = time.perf_counter()
            x = np.fromfile(path, np.uint8)
            acc["read"] += time.perf_counter() - t
            for name, op in list(ops.items())[1:]:
                t = time.perf_counter()
                x = op(x)
                acc[name] += time.perf_counter() - t
        return acc

    out = {}
    for name, one_pass in (("sknet", sknet_pass), ("mindspore", mindspore_pass)):
        if name not in args.pipelines:
            continue
        one_pass(0)                                    # warm-up: file cache, lazy imports
        runs = [one_pass(e) for e in range(1, args.passes + 1)]
        out[name] = {k: min(r[k] for r in runs) / n * 1e3 for k in runs[0]}
    return out


def print_stages(args):
    cores = sorted(os.sched_getaffinity(0))[:1]
    env = dict(os.environ, GLOG_v="3", **{v: "1" for v in THREAD_VARS})
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "stages:1", "--folder", args.folder,
           "--images", str(args.images), "--passes", str(args.passes), "--batch", str(args.batch),
           "--size", str(args.size), "--pipelines", *args.pipelines]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", ",".join(map(str, cores))] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"stage timing failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# ms per image, one core, {args.images} images, best of {args.passes}, {args.size} px, "
          f"load average {load:.2f}; mindspore's ops called one by one (eager: each call's Python overhead included)")
    for name, stages in rows.items():
        print(f"| {name} | " + " | ".join(f"{k} {v:.3f}" for k, v in stages.items())
              + f" | total {sum(stages.values()):.3f} ms ({1e3 / sum(stages.values()):.0f} img/s) |")
    return 0


def child(args):
    if args.child == "stages:1":
        print(json.dumps(stage_times(args)))
        return
    name, workers = args.child.split(":")
    workers = int(workers)
    if name == "mindspore":
        times = run_mindspore(args, workers)
    elif name == "pil":
        times = run_pil(args, workers)
    else:
        times = run_sknet(args, workers, "pil" if name == "sknet-pil" else "auto")
    print(json.dumps({"times": times}))


def measure(args, name, workers, images):
    """images/s per core of ``name`` on ``workers`` cores, in a fresh pinned process."""
    cores = sorted(os.sched_getaffinity(0))[:workers]
    env = dict(os.environ, GLOG_v="3", **{v: "1" for v in THREAD_VARS})
    cmd = [sys.executable, os.path.abspath(__file__), "--child", f"{name}:{workers}", "--folder", args.folder,
           "--images", str(args.images), "--passes", str(args.passes), "--batch", str(args.batch),
           "--size", str(args.size)]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", ",".join(map(str, cores))] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"{name} with {workers} worker(s) failed: {tail}", file=sys.stderr)
        return None
    times = json.loads(proc.stdout.strip().splitlines()[-1])["times"]
    return images / min(times) / workers


def versions():
    out = {"python": platform.python_version()}
    from sknet.data import folder

    out["sknet decode"] = "libjpeg-turbo region (sknet.data._jpeg)" if folder._jpeg else "PIL (no sknet.data._jpeg)"
    for mod in ("PIL", "numpy", "torch", "mindspore"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    from PIL import features

    out["libjpeg"] = f"{features.version('jpg')}{' turbo' if features.check_feature('libjpeg_turbo') else ''}"
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child(args)
    if args.images < args.batch:
        raise SystemExit(f"--images {args.images} is less than one --batch {args.batch}")
    images = args.images // args.batch * args.batch
    tmp = None
    if args.folder is None:
        tmp = tempfile.mkdtemp(prefix="sknet-pipeline-")
        args.folder = build_folder(tmp, args.images)
    try:
        if args.stages:
            return print_stages(args)
        # --repeat: every pipeline's process again, interleaved (a slow spell falls on all of
        # them); the median per pipeline and worker count. Run to run, one process's figure
        # moved by up to 25 % on this shared machine.
        runs = {name: {w: [] for w in args.workers} for name in args.pipelines}
        for _ in range(args.repeat):
            for name in args.pipelines:
                for w in args.workers:
                    runs[name][w].append(measure(args, name, w, images))
        rows = {name: {w: median_run(r) for w, r in by_w.items()} for name, by_w in runs.items()}
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    repeat = f", median of {args.repeat} interleaved runs" if args.repeat > 1 else ""
    print(f"# {images} images/pass, best of {args.passes}{repeat}, {args.size} px, batch {args.batch}, "
          f"load average {load:.2f} on {os.cpu_count()} cores; " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    ref = rows.get("mindspore", {})
    head = "| pipeline | " + " | ".join(f"{w} worker(s): img/s per core | vs mindspore" for w in args.workers)
    print(head + (" | scaling |" if len(args.workers) > 1 else " |"))
    print("|---" * (1 + 2 * len(args.workers) + (len(args.workers) > 1)) + "|")
    for name, by_w in rows.items():
        cells = []
        for w in args.workers:
            v, r = by_w[w], ref.get(w)
            cells += ["failed" if v is None else f"{v:.0f}",
                      f"{v / r:.2f}x" if v is not None and r else "-"]
        if len(args.workers) > 1:
            lo, hi = by_w[args.workers[0]], by_w[args.workers[-1]]
            cells.append(f"{hi * args.workers[-1] / (lo * args.workers[0]):.2f}x" if lo and hi else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        report = {"images": images, "passes": args.passes, "size": args.size, "batch": args.batch,
                  "load": load, "versions": versions(), "repeat": args.repeat,
                  "runs": {n: {str(w): r for w, r in by_w.items()} for n, by_w in runs.items()},
                  "rows": [{"pipeline": n, "workers": w, "per_core": v} for n, by_w in rows.items()
                           for w, v in by_w.items()]}
        from sknet.atomic import atomic_write

        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    return 0 if all(v is not None for by_w in rows.values() for v in by_w.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

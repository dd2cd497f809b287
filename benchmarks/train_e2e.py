"""End-to-end training throughput, data loading included: our trainers beside timm's and mindcv's.

    python benchmarks/train_e2e.py --timm-python /work/benchenv/timm/bin/python \\
        --mindcv-python /work/benchenv/mindcv/bin/python --repeat 3  # both settings, all four
    python benchmarks/train_e2e.py --settings fmnist --impls sknet-torch --steps 2 --warmup 1 \\
        --batch 4                                                    # smoke, ours only

Each implementation trains in a fresh process of its own environment, on the same folder,
model, batch, threads, loader workers and augmentations, for ``--warmup`` untimed and then
``--steps`` timed optimizer steps; images/s is steps x batch over the wall time between the
ends of the warm-up and of the last step, so data loading (decode, augmentation, collation,
the hand-over from loader workers) counts wherever it is not hidden behind the step.

- ``sknet-torch`` / ``sknet-mindspore``: what ``python -m sknet.train`` runs in one process
  (the sknet.training loop with the backend's adapter, sknet.data's pipeline) from a recipe
  written for the setting.
- ``timm``: timm's training path as its train.py builds it (create_dataset, create_loader,
  create_model, create_optimizer_v2, then forward, loss, backward, step); timm's pip package
  ships no train.py.
- ``mindcv``: mindcv's (create_dataset, create_transforms, create_loader, create_model,
  create_loss, create_optimizer, create_trainer; Model.train with a step timer), in GRAPH mode
  as its train.py defaults to; dataset sink mode only where MindSpore has it (not the CPU).

Settings: ``imagenet``, 224 px on an ImageFolder built from the photos shipped with installed
packages (benchmarks/input_pipeline.py's folder: 500x375 JPEG q90) with RandomResizedCrop
(bicubic, 0.08-1), flip and colour jitter 0.4; ``fmnist``, 28 px Fashion-MNIST images saved as
a PNG ImageFolder (every loader decodes the same files), no augmentation, as the main job's
recipe. Both MindSpore sides run with oneDNN held to AVX2 (``ONEDNN_MAX_CPU_ISA``, our
backend's default). Our PyTorch side runs in the timm environment and our MindSpore side in mindcv's when
they are given (same framework build as the peer), with this tree's sknet.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from measure import cpu_model, median_run  # noqa: E402

IMPLS = ("sknet-torch", "timm", "sknet-mindspore", "mindcv")
# Which of ours each peer is compared with: the same framework.
PEER_OF = {"timm": "sknet-torch", "mindcv": "sknet-mindspore"}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LR, MOMENTUM, WEIGHT_DECAY, SMOOTHING = 0.1, 0.9, 1e-4, 0.1
# size, batch, augmentation (None: the eval resize only), our MindSpore spec (mindcv's layout)
SETTINGS = {
    "imagenet": dict(size=224, batch=16, steps=16, augment=dict(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                                                                hflip=0.5, jitter=0.4)),
    "fmnist": dict(size=28, batch=128, steps=20, augment=None),
}
MS_SPEC = {"skresnet18": "mindcv_skresnet18", "skresnext50_32x4d": "mindcv_skresnext50_32x4d"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--model", default="skresnet18", help="a name timm, mindcv and ours share")
    p.add_argument("--batch", type=int, help="per step (default: the setting's, 16 at 224 px, 128 at 28)")
    p.add_argument("--steps", type=int, help="timed optimizer steps (default: the setting's)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (start-up, GRAPH compilation)")
    p.add_argument("--images", type=int, help="images in the folder (default: enough for one epoch of "
                   "warm-up + steps, so no epoch boundary or evaluation falls in the window)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="compute threads of the step")
    p.add_argument("--workers", type=int, default=1, help="loader worker processes (threads in mindcv's)")
    p.add_argument("--timm-python", help="python of an environment with timm (docs/performance.md)")
    p.add_argument("--mindcv-python", help="python of an environment with mindcv")
    p.add_argument("--repeat", type=int, default=1, help="runs of each implementation, interleaved; the "
                   "median is shown, with the range")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--setting", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error(f"--repeat must be >= 1, got {args.repeat}")
    return args


# --- the folders ----------------------------------------------------------------------------------

def fmnist_folder(root, count):
    """``root/train/<class>/*.png``: the first ``count`` Fashion-MNIST training images, as RGB PNGs."""
    from PIL import Image

    from sknet.data.idx import FASHION_MNIST_CLASSES, load_split
    from sknet.recipe import FASHION_MNIST_ROOT

    images, labels = load_split(os.environ.get("SKNET_FASHION_MNIST", FASHION_MNIST_ROOT), "train")
    for k in range(count):
        folder = Path(root) / "train" / FASHION_MNIST_CLASSES[int(labels[k])].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[k]).convert("RGB").save(folder / f"{k:05d}.png")
    return root


def build_folder(setting, root, count):
    if setting == "fmnist":
        return fmnist_folder(root, count)
    import input_pipeline

    return input_pipeline.build_folder(root, count)


def classes_in(folder):
    return len([d for d in (Path(folder) / "train").iterdir() if d.is_dir()])


# --- the implementations, each in a child process -------------------------------------------------

class Window:
    """Wall time from the end of step ``warmup`` to the end of step ``warmup + steps``."""

    def __init__(self, warmup, steps):
        self.warmup, self.steps = warmup, steps
        self.n, self.t0, self.t1 = 0, None, None

    def tick(self):
        """Call after each step; True once the window is closed."""
        self.n += 1
        if self.n == self.warmup:
            self.t0 = time.perf_counter()
        elif self.n == self.warmup + self.steps:
            self.t1 = time.perf_counter()
        return self.t1 is not None

    @property
    def seconds(self):
        return self.t1 - self.t0


def use_tree():
    """This tree's sknet, whatever sknet the environment holds (the peer environments install
    one editable from another checkout, whose finder would hand out its own ``sknet.backends``)."""
    import importlib.util

    for name, path in (("sknet", ROOT / "sknet"), ("sknet.backends", ROOT / "backends"),
                       ("sknet.configs", ROOT / "configs")):
        spec = importlib.util.spec_from_file_location(name, path / "__init__.py",
                                                      submodule_search_locations=[str(path)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        if "." in name:
            setattr(sys.modules["sknet"], name.split(".")[1], module)


def recipe_text(args, setting, folder, backend):
    """The recipe our trainers run: the setting's data, batch and optimizer, nothing else on."""
    s = SETTINGS[setting]
    aug = s["augment"]
    model = MS_SPEC.get(args.model, args.model) if backend == "mindspore" else args.model
    data = dict(kind="imagefolder", root=str(folder), train_split="train", val_split="train", size=s["size"],
                crop_pct=1.0, interpolation="bicubic", mean=list(MEAN), std=list(STD),
                num_workers=args.workers, drop_last=True)
    if aug:
        data.update(crop="random_resized", scale=list(aug["scale"]), ratio=list(aug["ratio"]), hflip=aug["hflip"],
                    color_jitter=aug["jitter"])
    else:
        data.update(crop="none", hflip=0.0)
    recipe = dict(model=model, num_classes=classes_in(folder), data=data, batch_size=args.batch,
                  epochs=1, optimizer=dict(name="sgd", lr=LR, base_batch=None, momentum=MOMENTUM, nesterov=False,
                                           weight_decay=WEIGHT_DECAY, decay_norm_and_bias=True),
                  schedule=dict(kind="constant"), label_smoothing=SMOOTHING, seed=0, device="cpu")
    return json.dumps(recipe)  # JSON is YAML


def run_sknet(args, backend):
    use_tree()
    if backend == "torch":
        import torch

        torch.set_num_threads(args.threads)
    else:
        import ms_runner

        import sknet.backends.mindspore  # noqa: F401  (sets MindSpore's environment before it loads)

        ms_runner.set_threads(args.threads)
    from sknet.train import train
    from sknet.training import Options

    window = Window(args.warmup, args.steps)
    with tempfile.TemporaryDirectory(prefix="sknet-e2e-") as tmp:
        path = Path(tmp) / f"e2e_{args.setting}.yaml"
        path.write_text(recipe_text(args, args.setting, args.folder, backend))
        opts = Options(recipe=str(path), backend=backend, device="cpu" if backend == "torch" else "CPU",
                       out=str(Path(tmp) / "run"), max_steps=args.warmup + args.steps, val_subset=args.batch,
                       ckpt_every=10 ** 9, quiet=True)
        train(opts, step_hook=lambda *_: window.tick())
    return window.seconds


def run_timm(args):
    import torch
    from timm.data import create_dataset, create_loader
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.models import create_model
    from timm.optim import create_optimizer_v2

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    s = SETTINGS[args.setting]
    aug = s["augment"]
    dataset = create_dataset("", root=args.folder, split="train", is_training=True, batch_size=args.batch)
    extra = dict(scale=aug["scale"], ratio=aug["ratio"], hflip=aug["hflip"], color_jitter=aug["jitter"]) if aug \
        else dict(no_aug=True)
    loader = create_loader(dataset, input_size=(3, s["size"], s["size"]), batch_size=args.batch, is_training=True,
                           use_prefetcher=False, interpolation="bicubic", mean=MEAN, std=STD, crop_pct=1.0,
                           num_workers=args.workers, device=torch.device("cpu"), **extra)
    model = create_model(args.model, num_classes=classes_in(args.folder))
    model.train()
    optimizer = create_optimizer_v2(model, "momentum", lr=LR, weight_decay=WEIGHT_DECAY, momentum=MOMENTUM,
                                    filter_bias_and_bn=False)
    loss_fn = LabelSmoothingCrossEntropy(smoothing=SMOOTHING)
    window = Window(args.warmup, args.steps)
    # train.py's train_one_epoch on one CPU process: no AMP, no EMA, no clipping.
    for x, y in loader:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        float(loss.detach())  # train.py reads the loss at log intervals; ours each step
        if window.tick():
            return window.seconds
    raise RuntimeError(f"the loader ran out after {window.n} steps")


def run_mindcv(args):
    import mindspore as ms

    import ms_runner
    from mindcv.data import create_dataset, create_loader, create_transforms
    from mindcv.loss import create_loss
    from mindcv.models import create_model
    from mindcv.optim import create_optimizer
    from mindcv.utils import create_trainer

    ms_runner.set_threads(args.threads)
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    s = SETTINGS[args.setting]
    aug = s["augment"]
    dataset = create_dataset(name="imagenet", root=args.folder, split="train", shuffle=True,
                             num_parallel_workers=args.workers)
    if aug:
        transform = create_transforms("imagenet", image_resize=s["size"], is_training=True, scale=aug["scale"],
                                      ratio=aug["ratio"], hflip=aug["hflip"], color_jitter=aug["jitter"],
                                      interpolation="bicubic", auto_augment=None, re_prob=0.0)
    else:  # their eval transform (decode, resize, centre crop, normalise) is the no-augmentation path
        transform = create_transforms("imagenet", image_resize=s["size"], is_training=False, crop_pct=1.0,
                                      interpolation="bicubic")
    loader = create_loader(dataset, batch_size=args.batch, drop_remainder=True, is_training=True,
                           transform=transform, num_parallel_workers=args.workers)
    net = create_model(args.model, num_classes=classes_in(args.folder), pretrained=False)
    loss = create_loss(name="CE", label_smoothing=SMOOTHING)
    optimizer = create_optimizer(net.trainable_params(), opt="momentum", lr=LR, weight_decay=WEIGHT_DECAY,
                                 momentum=MOMENTUM, nesterov=False, weight_decay_filter="disable")
    trainer = create_trainer(net, loss, optimizer, metrics=None, amp_level="O0", amp_cast_list=None,
                             loss_scale_type="fixed", loss_scale=1.0, drop_overflow_update=False)
    window = Window(args.warmup, args.steps)

    class Timer(ms.train.Callback):
        def on_train_step_end(self, run_context):
            if window.tick():
                run_context.request_stop()

    sink = ms.get_context("device_target") == "Ascend"  # mindcv's train.py sinks where MindSpore can
    trainer.train(1, loader, callbacks=[Timer()], dataset_sink_mode=sink)
    if window.t1 is None:
        raise RuntimeError(f"the loader ran out after {window.n} steps")
    return window.seconds


def child(args):
    impl = args.child
    if impl == "timm":
        seconds = run_timm(args)
    elif impl == "mindcv":
        seconds = run_mindcv(args)
    else:
        seconds = run_sknet(args, impl.split("-")[1])
    print(json.dumps({"seconds": seconds, "versions": versions()}))


# --- the parent -----------------------------------------------------------------------------------

def python_of(args, impl):
    """Peers run in their environments; ours in the same one as its peer when given, else this one."""
    peer = {"sknet-torch": "timm", "sknet-mindspore": "mindcv"}.get(impl, impl)
    return getattr(args, f"{peer}_python") or sys.executable


def measure(args, setting, folder, impl):
    """(images/s, versions) of ``impl`` on ``setting``, or (None, reason)."""
    env = dict(os.environ, GLOG_v="3", PYTHONPATH=str(ROOT))
    if impl in ("sknet-mindspore", "mindcv"):
        # Both MindSpore sides with oneDNN held to AVX2, our backend's default (docs/performance.md:
        # unheld, MindSpore's CPU convolutions run oneDNN's AVX-512 reference loop, many times slower).
        env.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    cmd = [python_of(args, impl), os.path.abspath(__file__), "--child", impl, "--setting", setting,
           "--folder", str(folder), "--model", args.model, "--batch", str(args.batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--workers", str(args.workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return None, (proc.stderr.strip().splitlines() or ["no output"])[-1]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return args.steps * args.batch / out["seconds"], out["versions"]


def versions():
    out = {"python": platform.python_version()}
    for mod in ("torch", "timm", "mindspore", "mindcv", "numpy", "PIL"):
        if mod in sys.modules or mod in ("numpy", "PIL"):
            try:
                out[mod] = __import__(mod).__version__
            except Exception:
                pass
    return out


def run_setting(args, setting):
    s = SETTINGS[setting]
    batch, steps = args.batch or s["batch"], args.steps or s["steps"]
    sub = argparse.Namespace(**{**vars(args), "batch": batch, "steps": steps})
    images = args.images or (args.warmup + steps + 1) * batch
    tmp = tempfile.mkdtemp(prefix=f"sknet-e2e-{setting}-")
    try:
        folder = build_folder(setting, tmp, images)
        # Interleaved (A B A B ...), so a slow spell of the machine falls on every implementation.
        runs = {impl: [] for impl in args.impls}
        for _ in range(args.repeat):
            for impl in args.impls:
                runs[impl].append(measure(sub, setting, folder, impl))
        results = {impl: median_run(r, rate=lambda run: run[0]) for impl, r in runs.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    aug = "RandomResizedCrop bicubic 0.08-1, flip 0.5, jitter 0.4" if s["augment"] else "no augmentation"
    print(f"\n## {setting}: {args.model}, {s['size']} px, batch {batch}, {args.warmup} + {steps} steps, "
          f"{images} images, {args.threads} threads, {args.workers} loader worker(s), {aug}")
    peers = [p for p in PEER_OF if p in args.impls]
    rate_head = "images/s" if args.repeat == 1 else f"images/s, median of {args.repeat} (range)"
    print(f"| implementation | {rate_head} | " + " | ".join(f"ours vs {p}" for p in peers) + " | versions |")
    print("|---" * (3 + len(peers)) + "|")
    rows = []
    for impl, (rate, info) in results.items():
        cells = []
        for p in peers:
            theirs = results[p][0]
            cells.append(f"{rate / theirs:.2f}x" if impl == PEER_OF[p] and rate and theirs else "")
        rates = sorted(r for r, _ in runs[impl] if r is not None)
        shown = "failed" if rate is None else f"{rate:.1f}" + (f" ({rates[0]:.1f}-{rates[-1]:.1f})" if len(rates) > 1 else "")
        detail = info if rate is None else ", ".join(f"{k} {v}" for k, v in info.items() if k != "python")
        print(f"| {impl} | {shown} | " + " | ".join(cells) + f" | {detail} |")
        rows.append(dict(setting=setting, impl=impl, images_per_s=rate, runs=rates, batch=batch, steps=steps,
                         size=s["size"], **({"error": info} if rate is None else {"versions": info})))
    return rows


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child(args)
    for flag in ("timm_python", "mindcv_python"):
        path = getattr(args, flag)
        if path and not os.access(path, os.X_OK):
            raise SystemExit(f"--{flag.replace('_', '-')} {path}: not an executable")
    load = os.getloadavg()[0]
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | {cpu_model()} | {os.cpu_count()} cores | "
          f"load average {load:.2f} at start")
    rows = []
    for setting in args.settings:
        rows += run_setting(args, setting)
    print(f"# load average {os.getloadavg()[0]:.2f} at the end")
    if args.json:
        from sknet.atomic import atomic_write

        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(dict(args=vars(args), rows=rows,
                                                                                   cpu=cpu_model()), indent=1)))
    return 0 if all(r["images_per_s"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Conversion speed and memory on SKNet-50 (skresnext50_32x4d), every direction.

    python benchmarks/convert.py [--model skresnext50_32x4d] [--repeat 3]

Each conversion runs in a fresh child process that first imports PyTorch, MindSpore and
safetensors and converts a tiny model once (so lazy imports inside the frameworks are
done), then measures one conversion of the big file:

- seconds: wall time of ``sknet.convert.convert`` alone, best of ``--repeat`` runs;
  framework import time is excluded, as the target says.
- peak memory: the rise of the process's peak resident set (VmHWM) over its resident set
  just before the conversion. The peak is reset first (``/proc/self/clear_refs`` = 5), so
  it is this conversion's own. RSS counts heap and mapped file pages alike, so a source
  file read through mmap counts in full: this is the stricter measure.

Targets (issue 3): <= 1 s and peak <= 2x the checkpoint's size.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CASES = [  # (source, destination, layout)
    ("timm.pth", "native.ckpt", "native"),
    ("native.ckpt", "back.pth", "native"),
    ("timm.pth", "native.safetensors", "native"),
    ("native.safetensors", "mindcv.ckpt", "mindcv"),
    ("mindcv.ckpt", "timm.safetensors", "timm"),
]


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(folder, src, dst, layout, repeat):
    os.environ.setdefault("GLOG_v", "3")
    import mindspore  # noqa: F401
    import safetensors.numpy  # noqa: F401
    import torch  # noqa: F401

    from sknet import get_spec
    from sknet.convert import convert, export
    from sknet.params import init_state

    small = get_spec("sknet_small")
    warm = export(small, init_state(small), os.path.join(folder, "warm.pth"))
    convert(warm, os.path.join(folder, "warm.ckpt"))
    convert(os.path.join(folder, "warm.ckpt"), os.path.join(folder, "warm.safetensors"))
    convert(os.path.join(folder, "warm.safetensors"), os.path.join(folder, "warm2.pth"))
    src, dst = os.path.join(folder, src), os.path.join(folder, dst)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status("VmRSS")
    start = time.perf_counter()
    convert(src, dst, layout=layout)
    first = time.perf_counter() - start
    peak = _status("VmHWM") - base
    times = [first]
    for _ in range(repeat - 1):
        start = time.perf_counter()
        convert(src, dst, layout=layout)
        times.append(time.perf_counter() - start)
    print(json.dumps({"seconds": min(times), "first": first, "peak": peak, "size": os.path.getsize(src)}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="skresnext50_32x4d")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--child", nargs=4, metavar=("FOLDER", "SRC", "DST", "LAYOUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(*args.child, args.repeat)

    import numpy as np

    from sknet import get_spec
    from sknet.convert import convert, export
    from sknet.params import tensor_specs

    spec = get_spec(args.model)
    rng = np.random.default_rng(0)
    state = {n: rng.standard_normal(s, dtype=np.float32) for n, s, _, _ in tensor_specs(spec)}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as folder:
        export(spec, state, os.path.join(folder, "timm.pth"), layout="timm")
        convert(os.path.join(folder, "timm.pth"), os.path.join(folder, "native.ckpt"))
        convert(os.path.join(folder, "timm.pth"), os.path.join(folder, "native.safetensors"))
        convert(os.path.join(folder, "timm.pth"), os.path.join(folder, "mindcv.ckpt"), layout="mindcv")
        print(f"{spec.name}: {sum(v.size for v in state.values()):,} values; best of {args.repeat} "
              f"conversions, framework imports excluded; peak = rise of peak RSS")
        print(f"{'conversion':44s} {'size MB':>8s} {'seconds':>8s} {'(1st)':>6s} {'peak MB':>8s} "
              f"{'peak/size':>9s}  targets <= 1 s, <= 2x")
        ok = True
        for src, dst, layout in CASES:
            out = subprocess.run([sys.executable, __file__, "--repeat", str(args.repeat), "--child",
                                  folder, src, dst, layout], capture_output=True, text=True)
            if out.returncode:
                sys.stderr.write(out.stderr)
                return out.returncode
            r = json.loads(out.stdout.strip().splitlines()[-1])
            ratio = r["peak"] / r["size"]
            good = r["seconds"] <= 1.0 and ratio <= 2.0
            ok &= good
            name = f"{src} -> {dst} ({layout})"
            print(f"{name:44s} {r['size'] / 1e6:8.1f} {r['seconds']:8.3f} {r['first']:6.2f} "
                  f"{r['peak'] / 1e6:8.1f} {ratio:9.2f}  {'ok' if good else 'OVER'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

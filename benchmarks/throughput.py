"""Inference images/s and training-step time of our SKNets beside timm's and mindcv's.

    python benchmarks/throughput.py                      # both models, batch 8 at 224, all cores
    python benchmarks/throughput.py --models sknet_small --iters 1 --rounds 1 --warmup 1

Run it in an environment where timm (PyTorch) or mindcv (MindSpore) is importable and
their same-named models are timed in the same process, round by round alternating with
ours, and every figure gets an our/their ratio. docs/performance.md says how to make
those environments and what each column means.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("GLOG_v", "3")

import measure  # noqa: E402
from measure import cpu_model  # noqa: E402

from sknet import get_spec  # noqa: E402
from sknet.tree import count_macs  # noqa: E402

TASKS = ("infer", "train")
# Backward costs about twice the forward's multiply-adds (input and weight gradients).
TRAIN_FLOP_FACTOR = 3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["skresnet18", "skresnext50_32x4d"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--backends", nargs="+", default=["torch", "mindspore"],
                   choices=["torch", "mindspore"])
    p.add_argument("--ms-modes", nargs="+", default=list(("pynative", "graph")),
                   choices=["pynative", "graph"])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations per implementation")
    p.add_argument("--iters", type=int, default=5, help="timed iterations per implementation per round")
    p.add_argument("--rounds", type=int, default=3, help="alternations of ours and theirs")
    p.add_argument("--channels-last", action="store_true", help="PyTorch: NHWC tensors (both sides)")
    p.add_argument("--compile", action="store_true",
                   help="PyTorch: also time torch.compile'd copies of ours and of timm's model")
    p.add_argument("--device", default="cpu", help="PyTorch: cpu, cuda or cuda:N (MindSpore runs on the CPU)")
    p.add_argument("--amp", choices=["fp16", "bf16"], help="PyTorch: autocast to this dtype (both sides)")
    p.add_argument("--no-reference", action="store_true", help="time ours only")
    p.add_argument("--onednn-isa", help="set ONEDNN_MAX_CPU_ISA (e.g. AVX2) before any framework "
                   "loads; it applies to every implementation in the run")
    p.add_argument("--memory", choices=["fresh", "inline"], default="fresh",
                   help="peak memory from a fresh process per implementation and task (default), or "
                   "from the timed run itself, where whatever ran before in the process skews it")
    p.add_argument("--memory-probe", metavar="LABEL:TASK", help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write every figure here")
    return p.parse_args(argv)


def versions():
    out = {"python": platform.python_version()}
    for mod in ("torch", "timm", "mindspore", "mindcv", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # absent, or broken beside another pin: just not reported
            pass
    return out


def bench(impls, tasks, args, fresh_peak):
    """{(label, task): Figure}: warm each up, then alternate them round by round.

    ``fresh_peak(label, task)`` gives the peak memory from a process of its own when
    ``--memory fresh``: in one process, the first implementation's allocations stay
    mapped and the next one's peak is measured on top of them.
    """
    figures = {}
    for task in tasks:
        for label, impl in impls.items():
            step = impl.set_task(task)
            with impl.memory() as mem:
                measure.timed(step, args.warmup, impl.sync)
            figures[(label, task)] = measure.Figure(peak_extra=mem.extra)
        # Only one implementation may be in train mode at a time for BN bookkeeping to
        # stay its own: set_task is called again right before each one's turn.
        for _ in range(args.rounds):
            for label, impl in impls.items():
                step = impl.set_task(task)
                with impl.memory() as mem:
                    times = measure.timed(step, args.iters, impl.sync)
                figures[(label, task)].add(times, mem.extra)
    if args.memory == "fresh":
        for label, task in figures:
            figures[(label, task)].peak_extra = fresh_peak(label, task)
    return figures


def fresh_peak(args, backend, mode, name, reference):
    """A function running ``--memory-probe`` for (label, task) in a child process."""
    def probe(label, task):
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-probe", f"{label}:{task}",
               "--models", name, "--backends", backend, "--ms-modes", mode, "--batch", str(args.batch),
               "--size", str(args.size), "--threads", str(args.threads), "--device", args.device,
               "--warmup", str(max(args.warmup, 1))]
        for flag, on in (("--channels-last", args.channels_last), ("--compile", args.compile),
                         ("--no-reference", not reference)):
            cmd += [flag] if on else []
        for flag, value in (("--amp", args.amp), ("--onednn-isa", args.onednn_isa)):
            cmd += [flag, value] if value else []
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"memory probe {name} {label} {task} failed: {tail}")
        return json.loads(proc.stdout.strip().splitlines()[-1])["peak_extra"]
    return probe


def run_probe(args):
    """Child of ``fresh_peak``: build as the parent did, run one implementation's warm-up, print its peak."""
    label, task = args.memory_probe.split(":")
    name, reference = args.models[0], not args.no_reference
    if args.backends == ["torch"]:
        import torch_runner as tr

        tr.set_threads(args.threads)
        impls, _ = tr.prepare(name, get_spec(name), args.batch, args.size, reference, args.channels_last,
                              args.compile, args.device, args.amp, compare=False)
    else:
        import ms_runner as mr

        mr.set_threads(args.threads)
        mr.set_mode(args.ms_modes[0])
        _, impls, _ = mr.prepare(name, get_spec, args.batch, args.size, reference, compare=False)
    impl = impls[label]
    step = impl.set_task(task)
    with impl.memory() as mem:
        measure.timed(step, args.warmup, impl.sync)
    print(json.dumps({"peak_extra": mem.extra}))
    return 0


def rows_for(model, backend, mode, spec, size, batch, figures, roof):
    macs = count_macs(spec, size) * batch
    rows = []
    for (label, task), fig in figures.items():
        flops = 2 * macs * (TRAIN_FLOP_FACTOR if task == "train" else 1)
        t = fig.median
        rows.append(dict(model=model, backend=backend, mode=mode, impl=label, task=task,
                         ms=1e3 * t, images_per_s=batch / t, gflops=flops / t / 1e9,
                         roofline=flops / t / 1e9 / roof, roof_gflops=roof, spread=fig.spread,
                         peak_mib=fig.peak_extra / 2 ** 20, n=len(fig.times)))
    return rows


def print_rows(rows, figures, deviation, ref_label):
    for r in rows:
        print(f"  {r['impl']:14s} {r['task']:5s} {r['ms']:9.1f} ms/step {r['images_per_s']:8.2f} img/s "
              f"{r['gflops']:7.1f} GFLOP/s ({100 * r['roofline']:4.1f}% of roof) "
              f"+{r['peak_mib']:6.0f} MiB peak  IQR {100 * r['spread']:4.1f}%  n={r['n']}")
    by = {(r["impl"], r["task"]): r for r in rows}
    ours = sorted({r["impl"] for r in rows if r["impl"].startswith("sknet")}, key=len)
    theirs = sorted({r["impl"] for r in rows if r["impl"].startswith(ref_label)}, key=len)
    for task in TASKS:
        for mine in ours:
            for ref in theirs:
                if (mine, task) not in by or (ref, task) not in by:
                    continue
                ratio = by[(ref, task)]["ms"] / by[(mine, task)]["ms"]
                per_round = measure.round_ratios(figures[(mine, task)], figures[(ref, task)])
                print(f"  {mine}/{ref} {task}: {ratio:.3f}x speed "
                      f"(rounds: {min(per_round):.3f}x to {max(per_round):.3f}x)")
                by[(mine, task)][f"ratio_vs_{ref}"] = ratio
                by[(mine, task)][f"round_ratios_vs_{ref}"] = per_round
    if deviation is not None:
        print(f"  eval logits, ours vs {ref_label} with the same weights: max |diff| / max |logit| "
              f"= {deviation:.2e}")


def run_torch(args, roof):
    import torch_runner as tr

    tr.set_threads(args.threads)
    reference = not args.no_reference and tr.has_timm()
    rows = []
    mode = "eager" + "".join(f"+{flag}" for flag, on in (
        ("channels_last", args.channels_last), (f"amp_{args.amp}", args.amp)) if on)
    for name in args.models:
        spec = get_spec(name)
        impls, dev = tr.prepare(name, spec, args.batch, args.size, reference, args.channels_last,
                                args.compile, args.device, args.amp)
        print(f"\n{name} | torch {mode} on {args.device} | batch {args.batch} x {args.size}^2 | "
              f"{args.threads} threads")
        figs = bench(impls, args.tasks, args, fresh_peak(args, "torch", "pynative", name, reference))
        r = rows_for(name, "torch", mode, spec, args.size, args.batch, figs, roof)
        for row in r:
            row["device"] = args.device
        print_rows(r, figs, dev, "timm")
        rows += r
        del impls
    return rows


def run_mindspore(args):
    import ms_runner as mr

    mr.set_threads(args.threads)
    roof = print_roof("MindSpore", mr.roof_gflops(args.threads), args.threads)
    reference = not args.no_reference and mr.has_mindcv()
    rows = []
    for mode in args.ms_modes:
        mr.set_mode(mode)
        for name in args.models:
            spec, impls, dev = mr.prepare(name, get_spec, args.batch, args.size, reference)
            print(f"\n{name} ({spec.name}) | mindspore {mode} | batch {args.batch} x {args.size}^2 "
                  f"| {args.threads} threads")
            figs = bench(impls, args.tasks, args, fresh_peak(args, "mindspore", mode, name, reference))
            r = rows_for(name, "mindspore", mode, spec, args.size, args.batch, figs, roof)
            print_rows(r, figs, dev, "mindcv")
            rows += r
            del impls
    mr.set_mode("pynative")
    return rows


def print_roof(framework, rates, threads):
    """The best of the measured dense rates; every one of them printed."""
    roof = max(rates.values())
    each = ", ".join(f"{what} {rate:.1f}" for what, rate in rates.items())
    print(f"\n# {framework} fp32 roof: {roof:.1f} GFLOP/s on {threads} threads, the best of: {each}")
    return roof


def main(argv=None):
    args = parse_args(argv)
    if args.onednn_isa:
        os.environ["ONEDNN_MAX_CPU_ISA"] = args.onednn_isa
    if args.memory_probe:
        return run_probe(args)
    import importlib.util

    backends = [b for b in args.backends if importlib.util.find_spec(b) is not None]
    if not backends:
        print("error: neither torch nor mindspore is importable", file=sys.stderr)
        return 2
    if "torch" in backends:
        import torch_runner as tr

        error = tr.device_error(args.device)
        if error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | {cpu_model()} | "
          f"{os.cpu_count()} cores | {json.dumps(versions())} | "
          f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}")
    print(f"# GFLOP/s = 2 x MACs (sknet.tree.count_macs) per image, x{TRAIN_FLOP_FACTOR} for a "
          "training step; roofline = that over the best dense fp32 rate (GEMM, 3x3 conv) the same "
          "framework reaches in this run")
    rows, roof = [], None
    if "torch" in backends:
        roof = print_roof(f"PyTorch ({args.device})", tr.roof_gflops(args.threads, args.device), args.threads)
        rows += run_torch(args, roof)
    if "mindspore" in backends:
        rows += run_mindspore(args)
    if args.json:
        # Written beside the destination first, so a failed run leaves no half file.
        tmp = f"{args.json}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(dict(args=vars(args), versions=versions(), cpu=cpu_model(),
                           rows=rows), f, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

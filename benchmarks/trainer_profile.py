"""Where a trainer's time goes on one process: data feeding, our step, its kernels alone, the whole loop.

    python benchmarks/trainer_profile.py --backend mindspore             # the main job's recipe
    python benchmarks/trainer_profile.py --backend torch --steps 20
    python benchmarks/trainer_profile.py --backend mindspore --recipe fashion_mnist_small --steps 2 --warmup 1

Each line is seconds per optimizer step at the recipe's batch, the median of ``--steps``
after ``--warmup`` untimed ones:

- ``data``: the adapter's batch iterator alone (the recipe's loader workers), nothing trained;
- ``step``: ``Adapter.step`` on one fixed batch (what the loop calls: its graphs, host syncs);
- ``split``: MindSpore only, ``Adapter.step`` through its three graphs (gradients, their
  finiteness, the update), the path of AMP and accumulation runs and of every run before the
  one-graph step;
- ``kernels``: the same network, loss and optimizer as one plain train step, as the framework's
  own docs write it (MindSpore: ``nn.TrainOneStepCell`` compiled whole with ``ms.jit``; PyTorch:
  forward, loss, backward, ``SGD.step``), on the same fixed batch, no loss read back;
- ``fwd+bwd``: the forward and backward alone (MindSpore: our ``Gradients`` graph; PyTorch:
  forward, loss, backward);
- ``loop``: ``sknet.train`` itself (data included), the time between consecutive steps;
- ``loop-w0``: the same with the batches built in the training process (``data.num_workers=0``);
- ``sync``: under msrun/torchrun only, ``World.average_buffers`` (the BN statistics averaged at
  every checkpoint and evaluation) and one ``World.all_sum``, per call.

``step - kernels`` is what our step adds; ``loop - step`` is what feeding and the loop add.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("GLOG_v", "3")


PARTS = ["data", "step", "split", "kernels", "fwd+bwd", "loop", "loop-w0", "sync"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=["torch", "mindspore"], default="mindspore")
    p.add_argument("--recipe", default="fashion_mnist")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, help="compute threads (default: the framework's)")
    p.add_argument("--parts", nargs="+", default=PARTS[:-1], choices=PARTS)
    p.add_argument("--json", help="also write the figures here")
    return p.parse_args(argv)


def median_of(fn, warmup, steps):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def setup(args):
    import importlib

    from sknet import backend_module
    from sknet.training import Options
    from sknet.training.options import load_run
    from sknet.training.plan import step_batch
    from sknet.schedule import learning_rates

    backend_module(args.backend)   # sets the framework's environment before it loads
    adapter_mod = importlib.import_module(f"sknet.backends.{args.backend}.train")
    if args.threads:
        if args.backend == "torch":
            import torch

            torch.set_num_threads(args.threads)
        else:
            import ms_runner   # benchmarks/ is sys.path[0] when run as a script

            ms_runner.set_threads(args.threads)
    opts = Options(recipe=args.recipe, backend=args.backend, quiet=True)
    recipe, spec, train, _ = load_run(opts)
    world = adapter_mod.World(None, recipe.device)
    adapter = adapter_mod.Adapter(world)
    lrs = learning_rates(recipe, 1000, 1)
    adapter.build(spec, recipe, lrs)
    adapter.set_train(True)
    batch = step_batch(recipe)
    return recipe, spec, train, adapter, batch


def data_rate(args, train, adapter, batch, workers):
    from sknet.data import epoch_batches

    order = epoch_batches(len(train), 1, 0, batch, 0, 0)[:args.warmup + args.steps]
    marks = []
    for _ in adapter.batches(train, order, 0, workers):
        marks.append(time.perf_counter())
    gaps = [b - a for a, b in zip(marks[args.warmup:], marks[args.warmup + 1:])]
    return statistics.median(gaps)


def kernels_mindspore(adapter, recipe, x, y, whole):
    import mindspore as ms
    from mindspore import nn

    from sknet.data import step_normalization
    from sknet.backends.mindspore.train import NetWithLoss, Normalize

    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    tx, ty = ms.Tensor(x), ms.Tensor(y)
    if whole:
        o = recipe.optimizer
        opt = nn.Momentum(adapter.model.trainable_params(), 0.01, o.momentum, weight_decay=o.weight_decay)
        net_with_loss = NetWithLoss(adapter.model, loss_fn, Normalize(*step_normalization(recipe, adapter.model.spec)))
        cell = nn.TrainOneStepCell(net_with_loss, opt).set_train(True)
        # Compiled as the trainer's step is: by GRAPH mode, or ms.jit under PYNATIVE.
        cell = cell if ms.get_context("mode") == ms.GRAPH_MODE else ms.jit(cell)
    else:
        cell = adapter.gradients
    def step():
        result = cell(tx, ty)
        # The executor is asynchronous; asnumpy waits for everything queued (Pipeline::WaitAll).
        (result[0] if isinstance(result, tuple) else result).asnumpy()
    return step


def kernels_torch(adapter, recipe, x, y, whole):
    import torch
    import torch.nn.functional as F

    model = adapter.model
    ty = torch.from_numpy(y.astype("int64"))
    o = recipe.optimizer
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=o.momentum, weight_decay=o.weight_decay)

    def step():
        loss = F.cross_entropy(model(adapter._images(x)), ty, label_smoothing=recipe.label_smoothing)
        if whole:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        if whole:
            opt.step()
    return step


def loop_rate(args, sets=()):
    from sknet.train import train
    from sknet.training import Options

    marks = []
    with tempfile.TemporaryDirectory(prefix="sknet-profile-") as tmp:
        opts = Options(recipe=args.recipe, backend=args.backend, out=tmp, quiet=True, val_subset=10,
                       max_steps=args.warmup + args.steps, ckpt_every=10 ** 9, sets=sets)
        train(opts, step_hook=lambda *_: marks.append(time.perf_counter()))
    gaps = [b - a for a, b in zip(marks[args.warmup - 1:], marks[args.warmup:])]
    return statistics.median(gaps)


def main(argv=None):
    args = parse_args(argv)
    recipe, spec, train, adapter, batch = setup(args)
    # uint8, as the trainers' loaders give it: the step's normalisation counts in step and kernels alike.
    x, y = train.batch(list(range(batch)), 0, u8=True)
    y = y.astype("int32" if args.backend == "mindspore" else "int64")
    figures = {}
    for part in args.parts:
        if part == "data":
            figures[part] = data_rate(args, train, adapter, batch, recipe.data.num_workers)
        elif part == "step":
            figures[part] = median_of(lambda: adapter.step(x, y, 0.01), args.warmup, args.steps)
        elif part == "split":
            if getattr(adapter, "fused", None) is None:
                continue
            fused, adapter.fused = adapter.fused, None
            figures[part] = median_of(lambda: adapter.step(x, y, 0.01), args.warmup, args.steps)
            adapter.fused = fused
        elif part in ("kernels", "fwd+bwd"):
            make = kernels_mindspore if args.backend == "mindspore" else kernels_torch
            figures[part] = median_of(make(adapter, recipe, x, y, part == "kernels"), args.warmup, args.steps)
        elif part == "loop":
            figures[part] = loop_rate(args)
        elif part == "loop-w0":
            figures[part] = loop_rate(args, (("data.num_workers", 0),))
        elif part == "sync" and adapter.world.distributed:
            world = adapter.world
            figures["average_buffers"] = median_of(lambda: world.average_buffers(adapter.model), 1, args.steps)
            figures["all_sum"] = median_of(lambda: world.all_sum([0.0, 1.0]), 1, args.steps)
    load = os.getloadavg()[0]
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | {args.backend} | recipe {recipe.name} "
          f"({spec.name}, batch {batch}, {recipe.data.num_workers} loader worker(s)) | load average {load:.2f}")
    if adapter.world.rank != 0:
        return 0
    for part, s in figures.items():
        print(f"  {part:8s} {1e3 * s:9.1f} ms/step {batch / s:8.1f} images/s")
    if "step" in figures and "kernels" in figures:
        print(f"  step - kernels: {1e3 * (figures['step'] - figures['kernels']):+.1f} ms")
    if "loop" in figures and "step" in figures:
        print(f"  loop - step:    {1e3 * (figures['loop'] - figures['step']):+.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(backend=args.backend, recipe=recipe.name, batch=batch, seconds=figures), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

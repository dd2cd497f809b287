"""Build a model on PyTorch and on MindSpore with the same weights, feed both the same
inputs and compare: eval logits, a training-mode pass and the BN statistics it leaves,
the gradients of a cross-entropy loss, and k SGD steps of a recipe (also fp16 and ONNX on
request). Prints a table (or JSON) and exits 1 when any check fails its tolerance.
``--layers`` adds where the two part ways: every stem/branch/attention/SK/block output."""
import json
import math
import sys
import time

HELP = "cross-backend numerical parity (PyTorch vs MindSpore), with a per-layer report"
EXAMPLES = """\
  sknet parity skresnet18
  sknet parity sknet50 --mode graph --layers --json"""


def add_arguments(p):
    from ..parity.checks import CHECKS, DEFAULT_CHECKS, DEFAULT_RECIPE, STEPS_SIZE

    p.add_argument("model", help="registered name, alias, or path to a spec YAML")
    p.add_argument("--checks", default=",".join(DEFAULT_CHECKS),
                   help=f"comma-separated, from {', '.join(CHECKS)}, or all (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8,
                   help="batch size (default 8: at 2 the attention BN makes fp32 gradients ill-conditioned)")
    p.add_argument("--size", type=int, help="input size (default: the spec's)")
    p.add_argument("--mode", choices=["pynative", "graph"], default="pynative", help="MindSpore's mode")
    p.add_argument("--steps", type=int, default=10, help="SGD steps of the steps check (default 10)")
    p.add_argument("--steps-size", type=int, metavar="PX",
                   help=f"input size of the steps check (default: the input size, at most {STEPS_SIZE})")
    p.add_argument("--steps-per-epoch", type=int, default=1000,
                   help="where in the recipe's schedule the steps sit: the first steps of a run "
                        "with this many steps an epoch (default %(default)s)")
    p.add_argument("--torch-fast", action="store_true",
                   help="run PyTorch's fast CPU paths (BN folding, fusion, NHWC, gate rewrite) "
                        "instead of its module-by-module math")
    p.add_argument("--recipe", default=DEFAULT_RECIPE,
                   help="recipe whose optimizer, lr schedule, weight decay and label smoothing the steps check uses")
    p.add_argument("--drop-path-rate", type=float, default=0.2, metavar="R",
                   help="stochastic depth of the droppath check (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of the inputs")
    p.add_argument("--residual-gamma", type=float, default=0.25, metavar="G",
                   help="weight of each block's last BN in the seeded weights (default %(default)s; timm's "
                        "and mindcv's init is 1, where SKNet-50's training is chaotic in float32: docs/parity.md)")
    p.add_argument("--checkpoint", help="weights for both sides (any file sknet convert reads) instead of the seed's")
    p.add_argument("--mindspore-checkpoint", metavar="PATH",
                   help="MindSpore's own weights, e.g. a converted file to check against --checkpoint")
    p.add_argument("--floor", action="store_true",
                   help="also measure PyTorch fp32 against PyTorch fp64 on each check (the conditioning)")
    p.add_argument("--layers", action="store_true", help="per-layer divergence report")
    p.add_argument("--isolate", choices=["auto", "on", "off"], default="auto",
                   help="each check in a process of its own, which bounds the peak memory to the largest "
                        "check's (MindSpore keeps its CPU memory pool); auto: from 128 px (default: auto)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args):
    started = time.perf_counter()
    from ..errors import SKNetError
    from ..parity.checks import TOLERANCES, inputs, make_setup, parse_checks, run_checks
    from ..parity.report import cost, format_cost, table, to_json
    from ..registry import get_spec

    checks = parse_checks(args.checks)
    spec = get_spec(args.model)
    if min(args.batch, args.steps, args.steps_per_epoch) < 1 or any(v is not None and v < 8 for v in (args.size, args.steps_size)):
        raise SKNetError("--batch, --steps and --steps-per-epoch must be >= 1 and --size and --steps-size >= 8")
    if not math.isfinite(args.residual_gamma):
        raise SKNetError(f"--residual-gamma must be a finite number, got {args.residual_gamma}")
    size = args.size or spec.input.size
    state = ms_state = None
    if args.checkpoint or args.mindspore_checkpoint:
        from ..convert import read_canonical
        from ..params import init_state

        state = (read_canonical(args.checkpoint, spec) if args.checkpoint
                 else init_state(spec, args.seed, args.residual_gamma))
        if args.mindspore_checkpoint:
            ms_state = read_canonical(args.mindspore_checkpoint, spec)
    setup = make_setup(spec, state, ms_state=ms_state, batch=args.batch, size=size, seed=args.seed,
                       mode=args.mode, recipe=args.recipe, steps=args.steps, floor=args.floor,
                       residual_gamma=args.residual_gamma, drop_path_rate=args.drop_path_rate,
                       steps_per_epoch=args.steps_per_epoch, steps_size=args.steps_size,
                       torch_fast=args.torch_fast)
    results = run_checks(setup, checks, isolate={"auto": "auto", "on": True, "off": False}[args.isolate])
    layer = None
    if args.layers:
        from ..parity.layers import format_layers, layer_report, layers_json

        x, _ = inputs(spec, args.batch, size, args.seed)
        layer = layer_report(spec, setup.state, setup.mindspore_state, x, TOLERANCES["eval"])
    context = {"model": spec.name, "batch": args.batch, "size": size, "steps_size": setup.steps_pixels,
               "mode": args.mode, "seed": args.seed}
    if args.json:
        out = json.loads(to_json(results, **context))
        if layer:
            out["layers"] = layers_json(*layer, TOLERANCES["eval"])
        out["cost"] = cost(started)
        print(json.dumps(out, indent=2))
    else:
        print(table(results, f"{spec.name}: PyTorch vs MindSpore ({args.mode}), batch {args.batch}, "
                             f"{size}x{size} (steps {setup.steps_pixels}x{setup.steps_pixels}), seed {args.seed}"))
        if layer:
            print(format_layers(*layer, TOLERANCES["eval"]))
        print(format_cost(cost(started)))
    failed = any(r.passed is False for r in results) or (layer is not None and layer[1] is not None)
    sys.stdout.flush()
    return 1 if failed else 0

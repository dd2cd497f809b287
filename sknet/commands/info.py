"""Print a model's trainable parameters, MACs, SK units and per-stage widths."""
import json

from ..registry import get_spec
from ..plan import build_plan
from ..tree import count_macs, count_params

HELP = "parameter count, MACs and structure of a model"
EXAMPLES = """\
  sknet info skresnet18
  sknet info sknet50 --backend onnx --size 160 --json"""


def add_arguments(p):
    p.add_argument("model", help="registered name, alias, or path to a spec YAML")
    p.add_argument("--backend", choices=["torch", "mindspore", "onnx"],
                   help="also build the model on this backend and count its parameters there")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--in-chans", type=int)
    p.add_argument("--size", type=int, help="input size for the MAC count (default: the spec's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def backend_params(backend, spec):
    """Trainable parameters as the framework itself counts them, on a freshly built model."""
    from .. import backend_module

    module = backend_module(backend)
    return module.count_trainable(module.build(spec))


def onnx_graph(spec, size=None):
    """Nodes, operators and MACs that the spec-built ONNX graph itself holds (counted from its
    Conv/Gemm nodes and ONNX's shape inference, independently of sknet.tree), BN kept and folded."""
    from sknet.backends.onnx import build_model, graph_stats

    from ..params import init_state

    tensors = init_state(spec)
    size = size or spec.input.size
    kept = graph_stats(build_model(spec, tensors, dynamic_batch=False, size=size))
    fused = graph_stats(build_model(spec, tensors, fuse_bn=True, dynamic_batch=False, size=size))
    return {"nodes": kept["nodes"], "nodes_fused_bn": fused["nodes"], "macs": kept["macs"],
            "params": kept["params"], "ops": kept["ops"]}


def describe(spec, size=None):
    plan = build_plan(spec, size)
    stages = []
    for stage in plan.stages:
        first, last = stage.blocks[0], stage.blocks[-1]
        stages.append({"name": stage.name, "depth": len(stage.blocks), "stride": first.stride,
                       "sk_width": first.width, "out_channels": last.out_ch, "attn_width": first.sk.attn_width,
                       "out_size": [last.sk.out_hw] * 2})
    return {"model": spec.name, "params": count_params(spec), "macs": count_macs(spec, size),
            "input_size": size or spec.input.size, "in_chans": spec.input.in_chans,
            "num_classes": spec.num_classes, "sk_units": len(plan.blocks),
            "branches": [[b.kernel_size, b.dilation] for b in spec.sk.branches], "stages": stages}


def run(args):
    spec = get_spec(args.model, num_classes=args.num_classes, in_chans=args.in_chans)
    info = describe(spec, args.size)
    if args.backend:
        info["backend"] = args.backend
        info["backend_params"] = backend_params(args.backend, spec)
        if args.backend == "onnx":
            info["onnx_graph"] = onnx_graph(spec, args.size)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['model']}: {info['params']:,} trainable parameters, "
          f"{info['macs'] / 1e9:.4f} GMACs at {info['input_size']}x{info['input_size']}, "
          f"{info['sk_units']} SK units, branches (kernel, dilation) {info['branches']}")
    if args.backend:
        print(f"  built on {args.backend}: {info['backend_params']:,} trainable parameters")
        if "onnx_graph" in info:
            g = info["onnx_graph"]
            print(f"  ONNX graph from the spec: {g['nodes']} nodes ({g['nodes_fused_bn']} with BN folded), "
                  f"{g['macs'] / 1e9:.4f} GMACs counted from its Conv/Gemm nodes")
    for st in info["stages"]:
        print(f"  {st['name']}: {st['depth']} blocks, stride {st['stride']}, SK width {st['sk_width']} "
              f"(d = {st['attn_width']}), out {st['out_channels']} @ {st['out_size'][0]}x{st['out_size'][1]}")
    return 0

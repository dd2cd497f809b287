"""Export a model to ONNX: built from the spec (default), or by PyTorch's or MindSpore's exporter.

Every file passes onnx.checker (full check) and its onnxruntime logits are compared with
the framework it came from (the spec-built graph: with every installed framework) before
it is written; a failing export writes nothing.
"""
import json
import time
from pathlib import Path

from ..atomic import atomic_write
from ..errors import SKNetError

HELP = "export a model (with a checkpoint's weights) to ONNX, checked in onnxruntime"


def add_arguments(p):
    p.add_argument("model", help="registered name, alias, or path to a spec YAML")
    p.add_argument("--checkpoint", help="weights: any file 'sknet convert' reads "
                   "(default: the seeded initial weights, for trying the pipeline only)")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--via", choices=["spec", "torch", "mindspore"], default="spec",
                   help="who writes the graph: our builder from the spec (needs only onnx), "
                        "torch.onnx.export, or mindspore.export (default: spec)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17; the spec builder takes 13 and up)")
    p.add_argument("--fuse-bn", action="store_true", help="fold every BatchNormalization into its convolution")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="leave the batch dimension symbolic (not with --via mindspore)")
    p.add_argument("--batch", type=int, default=1, help="the fixed batch size without --dynamic-batch (default 1)")
    p.add_argument("--size", type=int, help="input height = width (default: the spec's)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--in-chans", type=int)
    p.add_argument("--seed", type=int, default=0, help="initial weights' seed when no --checkpoint is given")
    p.add_argument("--tol", type=float, default=1e-5,
                   help="largest accepted |onnxruntime - framework| / max |framework| (default 1e-5)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")


def run(args):
    import onnx

    from sknet.backends.onnx.analysis import graph_stats
    from sknet.backends.onnx.exporters import export, references_for, verify

    from ..params import init_state
    from ..registry import get_spec

    if args.batch < 1:
        raise SKNetError(f"--batch must be >= 1, got {args.batch}")
    spec = get_spec(args.model, num_classes=args.num_classes, in_chans=args.in_chans)
    if args.checkpoint:
        from ..convert import read_canonical

        tensors = read_canonical(args.checkpoint, spec)
    else:
        tensors = init_state(spec, args.seed)
    size = args.size or spec.input.size
    start = time.time()
    model = export(spec, tensors, args.via, args.opset, args.fuse_bn, args.dynamic_batch, args.batch, size)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise SKNetError(f"the {args.via} export fails onnx.checker: {str(err).splitlines()[0]}") from None
    backends = references_for(args.via)
    batches = (1, 3) if args.dynamic_batch else (args.batch,)
    errors = verify(model, spec, tensors, backends, batches, size)
    failed = {b: e for b, e in errors.items() if not e <= args.tol}
    if failed:
        worst = ", ".join(f"{b} {e:.2e}" for b, e in failed.items())
        raise SKNetError(f"the {args.via} export disagrees with {worst} (relative, tolerance {args.tol:g}); "
                         f"nothing written to {args.output}")
    data = model.SerializeToString()
    atomic_write(args.output, lambda tmp: Path(tmp).write_bytes(data))
    try:
        stats = graph_stats(model)
    except Exception:  # shape inference may not see through every exporter's graph; counts are extras
        stats = {}
    report = {"output": str(args.output), "model": spec.name, "via": args.via,
              "checkpoint": args.checkpoint, "opset": model.opset_import[0].version, "fuse_bn": args.fuse_bn,
              "dynamic_batch": args.dynamic_batch, "input": [("batch" if args.dynamic_batch else args.batch),
                                                             spec.input.in_chans, size, size],
              "nodes": stats.get("nodes"), "macs": stats.get("macs"), "checked_batches": list(batches),
              "max_rel_err": errors, "tol": args.tol, "seconds": round(time.time() - start, 2)}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    checked = ", ".join(f"{b} {e:.1e}" for b, e in errors.items()) or "no framework installed to compare with"
    print(f"wrote {args.output}: {spec.name} via {args.via}, opset {report['opset']}, "
          f"{report['nodes']} nodes, input {report['input']}, BN {'folded' if args.fuse_bn else 'kept'}")
    print(f"  onnx.checker (full) passed; onnxruntime vs {checked} (max relative error, tolerance {args.tol:g})")
    if not args.checkpoint:
        print(f"  note: no --checkpoint given, these are the initial weights of seed {args.seed}")
    return 0

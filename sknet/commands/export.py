"""Export a model for deployment: ONNX, TorchScript, a torch.export program, or MindIR.

Each file is read back before it is kept and its logits compared with the framework it came
from, on fixed seeded inputs (two batch sizes where the batch is left free): ONNX in
onnxruntime after onnx.checker (the spec-built graph against every installed framework),
TorchScript by torch.jit.load, torch.export by torch.export.load, MindIR by mindspore.load
+ nn.GraphCell. A file that fails is not written (exit 2). The tolerance, 1e-5 of the
largest |logit|, is the project's fp32 parity bound (docs/export.md says why).
"""
import json
import time
from pathlib import Path

from ..atomic import atomic_write
from ..deploy import DYNAMIC_BATCHES, FORMATS, format_for
from ..errors import SKNetError

HELP = "export a model (with a checkpoint's weights) to ONNX, TorchScript, torch.export or MindIR, checked"
EXAMPLES = """\
  sknet export skresnet18 -o skresnet18.onnx                       # ONNX, dynamic batch, seed-0 weights
  sknet export skresnet18 --checkpoint w.pth --format torchscript  # writes skresnet18.pt
  sknet export sknet50 --checkpoint w.ckpt -o sknet50.mindir      # the suffix picks the format
  sknet export skresnet18 --format torch-export --size 160 -o m.pt2"""
ONNX_ONLY = ("via", "opset", "fuse_bn")


def add_arguments(p):
    p.add_argument("model", help="registered name, alias, or path to a spec YAML")
    p.add_argument("--format", choices=list(FORMATS),
                   help="onnx, torchscript (.pt), torch-export (.pt2) or mindir (.mindir); "
                        "default: the one -o's suffix names, else onnx")
    p.add_argument("-o", "--output", help="the file to write (default: MODEL and the format's suffix, here)")
    p.add_argument("--checkpoint", help="weights: any file 'sknet convert' reads "
                   "(default: the seeded initial weights, for trying the pipeline only)")
    p.add_argument("--dynamic-batch", action="store_const", const=True, default=None,
                   help="leave the batch dimension free (the default wherever the exporter allows it; "
                        "MindSpore's ONNX exporter does not)")
    p.add_argument("--static-batch", dest="dynamic_batch", action="store_const", const=False,
                   help="fix the batch dimension to --batch")
    p.add_argument("--batch", type=int, help="a fixed batch size (implies --static-batch; default 1 when fixed)")
    p.add_argument("--size", type=int, help="input height = width (default: the spec's)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--in-chans", type=int)
    p.add_argument("--seed", type=int, default=0, help="initial weights' seed when no --checkpoint is given")
    p.add_argument("--tol", type=float, default=1e-5,
                   help="largest accepted |file - framework| / max |framework| (default 1e-5)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    onnx = p.add_argument_group("ONNX only")
    onnx.add_argument("--via", choices=["spec", "torch", "mindspore"],
                      help="who writes the graph: our builder from the spec (needs only onnx), "
                           "torch.onnx.export, or mindspore.export (default: spec)")
    onnx.add_argument("--opset", type=int, help="ONNX opset (default 17; the spec builder takes 13 and up)")
    onnx.add_argument("--fuse-bn", action="store_true", default=None,
                      help="fold every BatchNormalization into its convolution")


def resolve(args, spec):
    """(format, output path, dynamic batch?, fixed batch, size) from the options, or a one-line error."""
    fmt = format_for(args.output, args.format)
    if fmt != "onnx":
        given = [f"--{name.replace('_', '-')}" for name in ONNX_ONLY if getattr(args, name) is not None]
        if given:
            raise SKNetError(f"{', '.join(given)}: ONNX options, not for --format {fmt}")
    output = args.output or f"{spec.name}{FORMATS[fmt][1]}"
    if fmt == "mindir" and not str(output).endswith(".mindir"):
        raise SKNetError(f"{output}: a MindIR file's name must end in .mindir (MindSpore appends it otherwise)")
    if args.batch is not None and args.batch < 1:
        raise SKNetError(f"--batch must be >= 1, got {args.batch}")
    if args.batch is not None and args.dynamic_batch:
        raise SKNetError("--batch fixes the batch size; it contradicts --dynamic-batch")
    via = args.via or "spec"
    if args.dynamic_batch and fmt == "onnx" and via == "mindspore":
        raise SKNetError("MindSpore's ONNX exporter takes no dynamic shapes: export a fixed --batch, "
                         "or use --via spec or torch")
    dynamic = args.dynamic_batch
    if dynamic is None:
        dynamic = args.batch is None and not (fmt == "onnx" and via == "mindspore")
    return fmt, output, dynamic, args.batch or 1, args.size or spec.input.size


def run(args):
    from ..params import init_state
    from ..registry import get_spec

    spec = get_spec(args.model, num_classes=args.num_classes, in_chans=args.in_chans)
    fmt, output, dynamic, batch, size = resolve(args, spec)
    if args.checkpoint:
        from ..convert import read_canonical

        tensors = read_canonical(args.checkpoint, spec)
    else:
        tensors = init_state(spec, args.seed)
    batches = DYNAMIC_BATCHES if dynamic else (batch,)
    start = time.time()
    report = {"output": str(output), "model": spec.name, "format": fmt, "checkpoint": args.checkpoint,
              "dynamic_batch": dynamic, "input": [("batch" if dynamic else batch), spec.input.in_chans, size, size],
              "checked_batches": list(batches), "tol": args.tol}
    if fmt == "onnx":
        checked = export_onnx(args, spec, tensors, output, dynamic, batch, size, batches, report)
    else:
        from ..deploy import write_checked

        errors = write_checked(fmt, spec, tensors, output, batches, dynamic, size, args.tol)
        report.update(errors)
        checked = (f"reloaded: max |diff| {errors['max_abs_diff']:.1e} from {FORMATS[fmt][0]}, "
                   f"{errors['max_rel_err']:.1e} of the largest |logit|")
    report["seconds"] = round(time.time() - start, 2)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    extra = f" via {report['via']}, opset {report['opset']}, {report['nodes']} nodes," if fmt == "onnx" else ""
    print(f"wrote {output}: {spec.name} as {fmt},{extra} input {report['input']}")
    print(f"  {checked} (tolerance {args.tol:g}) at batch {', '.join(map(str, batches))}")
    if not args.checkpoint:
        print(f"  note: no --checkpoint given, these are the initial weights of seed {args.seed}")
    return 0


def export_onnx(args, spec, tensors, output, dynamic, batch, size, batches, report):
    """Write the ONNX file (onnx.checker, then onnxruntime against the frameworks); fill ``report``."""
    import onnx

    from sknet.backends.onnx.analysis import graph_stats
    from sknet.backends.onnx.exporters import export, references_for, verify

    via, opset, fuse_bn = args.via or "spec", args.opset or 17, bool(args.fuse_bn)
    model = export(spec, tensors, via, opset, fuse_bn, dynamic, batch, size)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise SKNetError(f"the {via} export fails onnx.checker: {str(err).splitlines()[0]}") from None
    errors = verify(model, spec, tensors, references_for(via), batches, size)
    failed = {b: e for b, e in errors.items() if not e <= args.tol}
    if failed:
        worst = ", ".join(f"{b} {e:.2e}" for b, e in failed.items())
        raise SKNetError(f"the {via} export disagrees with {worst} (relative, tolerance {args.tol:g}); "
                         f"nothing written to {output}")
    data = model.SerializeToString()
    atomic_write(output, lambda tmp: Path(tmp).write_bytes(data))
    try:
        stats = graph_stats(model)
    except Exception:  # shape inference may not see through every exporter's graph; counts are extras
        stats = {}
    report.update(via=via, opset=model.opset_import[0].version, fuse_bn=fuse_bn, nodes=stats.get("nodes"),
                  macs=stats.get("macs"), max_rel_err=errors)
    found = ", ".join(f"{b} {e:.1e}" for b, e in errors.items()) or "no framework installed to compare with"
    return (f"onnx.checker (full) passed, BN {'folded' if fuse_bn else 'kept'}; onnxruntime vs {found} "
            f"(max relative error)")

"""Convert a checkpoint between PyTorch (.pth/.pt/.bin), MindSpore (.ckpt) and safetensors,
and between our, timm's and mindcv's names. The source's layout and model are found from
its keys and shapes; values are copied bit for bit."""

HELP = "convert a checkpoint between formats and layouts (lossless)"
EXAMPLES = """\
  sknet convert timm_skresnet18.pth skresnet18.ckpt               # PyTorch/timm -> MindSpore
  sknet convert last.ckpt last.safetensors --layout timm"""


def add_arguments(p):
    p.add_argument("src", metavar="SRC", help="checkpoint to read (.pth .pt .bin .ckpt .safetensors)")
    p.add_argument("dst", metavar="DST", help="checkpoint to write; its extension picks the format")
    p.add_argument("--model", help="registered name, alias or spec YAML (default: found from the keys and shapes)")
    p.add_argument("--layout", choices=["native", "timm", "mindcv"], default="native",
                   help="names in DST: native (DST's framework's own), timm or mindcv (default: native)")
    p.add_argument("--with-optimizer", action="store_true",
                   help="also convert SGD momentum buffers, epoch and step of a training checkpoint")
    p.add_argument("--recipe", help="with --with-optimizer: the run's recipe, to group PyTorch SGD "
                                    "parameters as the trainer does (MindSpore files do not record it)")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="convert NaN/Inf values with a warning instead of refusing the file")


def run(args):
    from ..convert import convert

    report = convert(args.src, args.dst, model=args.model, layout=args.layout,
                     with_optimizer=args.with_optimizer, recipe=args.recipe,
                     allow_nonfinite=args.allow_nonfinite)
    print(report)
    return 0

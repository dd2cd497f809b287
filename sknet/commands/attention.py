"""SK attention analysis (the paper's Figs. 2-3): per SK unit, the mean selection weight on each
branch and large - small, for each image with its centre enlarged by each scale; writes
attention.csv, difference.png and one map figure per image into the output folder."""
import sys
from pathlib import Path

from ..attention import (analyse, expand_images, large_small, map_file_names, plot_differences, plot_image,
                         require_matplotlib, resolve_units, summary, unit_paths, write_csv)
from ..errors import SKNetError
from ..registry import get_spec

HELP = "SK attention per unit for enlarged images: CSV and figures"
EXAMPLES = """\
  sknet attention --model skresnet18 --checkpoint w.pth --images a.jpg b.jpg -o attention/"""
BACKENDS = ("torch", "mindspore")


def add_arguments(p):
    p.add_argument("--model", required=True, help="registered name, alias, or path to a spec YAML")
    p.add_argument("--checkpoint", help="weights (any format sknet convert reads); without it: random "
                                        "weights, and the figures mean nothing")
    p.add_argument("--backend", choices=BACKENDS, default="torch")
    p.add_argument("--images", nargs="+", required=True, metavar="PATH", help="image files or folders")
    p.add_argument("--scales", default="1.0,1.5", help="centre enlargements, comma-separated, each >= 1 "
                                                       "(default: 1.0,1.5)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (created)")
    p.add_argument("--size", type=int, help="input size (default: the model's)")
    p.add_argument("--num-classes", type=int, help="classifier width, if the checkpoint's differs from the spec")
    p.add_argument("--map-units", help="comma-separated SK unit paths to map, or 'all' "
                                       "(default: the last unit of each stage)")
    p.add_argument("--channel-unit", help="SK unit whose per-channel attention each image's figure plots "
                                          "(default: the last unit of the second stage, SK_3_4 on SKNet-50)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed when there is no --checkpoint")


def parse_scales(text):
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise SKNetError(f"--scales '{text}': expected numbers separated by commas, e.g. 1.0,1.5") from None
    if not scales or any(s < 1 for s in scales):
        raise SKNetError(f"--scales '{text}': give one or more enlargements, each >= 1")
    return scales


def capture_fn(backend):
    import importlib

    from .. import backend_module

    backend_module(backend)  # a missing framework is reported as BackendMissing
    return importlib.import_module(f"sknet.backends.{backend}.attention").capture


def run(args):
    from .. import create_model

    scales = parse_scales(args.scales)
    require_matplotlib()
    spec = get_spec(args.model, num_classes=args.num_classes, size=args.size)
    images = expand_images(args.images)
    map_units = None
    if args.map_units == "all":
        map_units = unit_paths(spec)
    elif args.map_units:
        map_units = [u.strip() for u in args.map_units.split(",") if u.strip()]
    # Everything the user typed is checked before the (slow) model build.
    map_units, channel_unit = resolve_units(spec, map_units, args.channel_unit)
    large_small(spec)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise SKNetError(f"-o {out}: exists and is not a folder")
    note = ""
    if args.checkpoint is None:
        print(f"sknet attention: warning: no --checkpoint, so {spec.name} has random weights (seed {args.seed}): "
              "the attention values and figures mean nothing", file=sys.stderr)
        note = "\n(random weights: this figure means nothing)"
    capture = capture_fn(args.backend)
    model = create_model(spec, backend=args.backend, checkpoint=args.checkpoint, seed=args.seed)
    if args.backend == "torch":
        model.eval()
    else:
        model.set_train(False)
    result = analyse(model, capture, spec, images, scales, map_units=map_units, channel_unit=channel_unit,
                     note=note)

    (out / "maps").mkdir(parents=True, exist_ok=True)
    write_csv(result, out / "attention.csv")
    plot_differences(result, out / "difference.png")
    for i, name in enumerate(map_file_names(result.images)):
        plot_image(result, i, out / "maps" / name)
    print(summary(result))
    print(f"wrote {out / 'attention.csv'} ({len(images)} images x {len(scales)} scales x "
          f"{len(result.units)} units), {out / 'difference.png'}, {len(images)} maps in {out / 'maps'}")
    return 0

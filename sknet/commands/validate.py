"""Top-1/top-5 of a checkpoint on a recipe's validation split, on either backend.

The checkpoint may come from either backend (or timm/mindcv): it is read through
``sknet.convert.read_canonical`` and loaded into a model built for ``--backend``,
so a PyTorch checkpoint validates on MindSpore and the reverse without a separate
conversion step.
"""
import json
import time

HELP = "top-1/top-5 of a checkpoint on the recipe's validation split (any backend, any checkpoint)"
EXAMPLES = """\
  sknet validate --config fashion_mnist_small --checkpoint runs/last.pth --backend mindspore"""


def add_arguments(p):
    p.add_argument("--config", "--recipe", dest="recipe", required=True, help="recipe name or YAML path")
    p.add_argument("--checkpoint", required=True, help=".pth/.pt/.bin/.ckpt/.safetensors of the recipe's model")
    p.add_argument("--backend", choices=["torch", "mindspore", "onnx"], default="torch")
    p.add_argument("--device", help="cpu | cuda (torch) | CPU | GPU | Ascend (mindspore); default: the recipe's")
    p.add_argument("--subset", type=int, help="only the first N validation images")
    p.add_argument("--batch-size", type=int, help="default: the recipe's eval_batch_size")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="evaluate weights holding NaN/Inf (warned) instead of refusing the file")


def predictor(backend, spec, tensors, device):
    """A function from a float32 NCHW batch to float32 logits, with ``tensors`` loaded."""
    from .. import backend_module
    from ..recipe import backend_device

    module = backend_module(backend)
    if backend == "torch":
        import torch

        dev = torch.device(backend_device(device, "torch") or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = module.build(spec, fast=True)
        module.load_canonical(model, tensors)
        model = model.to(dev).eval()

        def predict(x):
            with torch.no_grad():
                return model(torch.from_numpy(x).to(dev)).float().cpu().numpy()
        return predict
    if backend == "mindspore":
        import mindspore as ms

        ms.set_context(mode=ms.PYNATIVE_MODE)
        module.use_device(backend_device(device, "mindspore") or "CPU")
        net = module.load_canonical(module.build(spec), tensors)
        net.set_train(False)
        forward = ms.jit(net)
        return lambda x: forward(ms.Tensor(x)).asnumpy().astype("float32")
    proto = module.build_model(spec, tensors)
    return lambda x: module.run(proto, x)


def validate(recipe_name, checkpoint, backend="torch", device=None, subset=None, batch_size=None,
             allow_nonfinite=False):
    """{'top1', 'top5', 'loss', 'n', ...} of ``checkpoint`` on the recipe's validation split."""
    from ..convert import read_canonical
    from ..data import build_dataset
    from ..recipe import load_recipe
    from ..training.evaluation import eval_batches, softmax_xent_sum, topk_correct

    import numpy as np

    recipe = load_recipe(recipe_name)
    spec = recipe.model_spec()
    tensors = read_canonical(checkpoint, spec, allow_nonfinite)
    val = build_dataset(recipe, spec, "val")
    if subset:
        val = val.subset(subset)
    predict = predictor(backend, spec, tensors, device or recipe.device)
    t0 = time.monotonic()
    loss, c1, c5 = 0.0, 0, 0
    for idx in eval_batches(np.arange(len(val)), batch_size or recipe.eval_batch_size or recipe.batch_size):
        x, y = val.batch(idx, 0)
        logits = predict(x)
        loss += softmax_xent_sum(logits, y)
        k1, k5 = topk_correct(logits, y)
        c1, c5 = c1 + k1, c5 + k5
    n = len(val)
    return {"checkpoint": str(checkpoint), "backend": backend, "model": spec.name, "recipe": recipe.name,
            "split": val.name, "n": n, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "correct1": c1,
            "loss": loss / n, "seconds": round(time.monotonic() - t0, 2)}


def run(args):
    res = validate(args.recipe, args.checkpoint, args.backend, args.device, args.subset, args.batch_size,
                   args.allow_nonfinite)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['backend']}: {res['model']} on {res['split']} ({res['n']} images): "
              f"top-1 {res['top1']:.2f} %  top-5 {res['top5']:.2f} %  loss {res['loss']:.4f}  "
              f"[{res['checkpoint']}, {res['seconds']:.1f} s]")
    return 0

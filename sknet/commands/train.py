"""Train a recipe in this process (the same as ``python -m sknet.train``).

For several workers launch ``python -m sknet.train`` with torchrun (PyTorch) or msrun
(MindSpore); see docs/training.md.
"""
HELP = "train a recipe on PyTorch or MindSpore (one process; torchrun/msrun for several)"
EXAMPLES = """\
  sknet train --config fashion_mnist_small --backend torch
  torchrun --nproc_per_node=2 -m sknet.train --config fashion_mnist_small --backend torch"""


def add_arguments(p):
    from ..train import add_arguments as train_arguments

    train_arguments(p)


def run(args):
    from ..train import run as train_run

    return train_run(args)

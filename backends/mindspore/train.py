"""MindSpore's training adapter for ``sknet.training.loop``: one process, or data parallel under msrun.

The optimizer is ``nn.Momentum`` with the recipe's per-step lr array (indexed by its
``global_step``) and one param group per weight-decay value. The train step is our
own cell rather than ``nn.TrainOneStepWithLossScaleCell``: that cell's overflow check
is an Ascend-only op, so on the CPU it cannot run at all; ours multiplies the loss by
the recipe's fixed scale and divides the (worker-averaged) gradients by it, which is
the same arithmetic on every device.
"""
import os

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from sknet.atomic import atomic_write
from sknet.params import tensor_specs
from sknet.recipe import backend_device
from sknet.schedule import weight_decay_of
from sknet.training import TrainError
from sknet.training.batches import BatchSource
from sknet.training.cluster import join_failure
from sknet.training.progress import log

from .model import build
from .names import ms_name, to_canonical


class World:
    """Rank and size; under msrun (its MS_ROLE/MS_WORKER_NUM environment) data parallel is turned on."""

    def __init__(self, device_name, recipe_device):
        target = backend_device(device_name or recipe_device, "mindspore") or "CPU"
        ms.set_context(mode=ms.PYNATIVE_MODE)
        ms.set_device(target)
        self.device = target
        self.distributed = "MS_WORKER_NUM" in os.environ and int(os.environ["MS_WORKER_NUM"]) > 1
        if self.distributed:
            from mindspore.communication import get_group_size, get_rank, init

            try:
                init()
            except RuntimeError as err:    # a node missing or extra: one line, not MindSpore's page
                raise join_failure(err) from None
            self.rank, self.size = get_rank(), get_group_size()
            ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                         device_num=self.size)
            self._sum = ops.AllReduce()
        else:
            self.rank, self.size = 0, 1

    def all_sum(self, values):
        if not self.distributed:
            return [float(v) for v in values]
        # float32 on the wire (CPU AllReduce has no float64): counts stay exact below 2**24.
        out = self._sum(ms.Tensor(np.asarray(values, np.float32))).asnumpy()
        return [float(v) for v in out]

    def average_buffers(self, model):
        """BN moving statistics averaged over workers (data parallel leaves each worker its own)."""
        if not self.distributed:
            return
        for p in model.get_parameters():
            if not p.requires_grad:
                # In place: set_data would swap the buffer under the compiled train step,
                # whose later BN updates would then be lost.
                ops.assign(p, self._sum(p.value()) / self.size)

    def close(self):
        """Nothing to release: msrun tears the communication down when the workers exit."""


class NetWithLoss(nn.Cell):
    def __init__(self, net, loss_fn):
        super().__init__(auto_prefix=False)
        self.net, self.loss_fn = net, loss_fn

    def construct(self, x, y):
        # Logits in float32 whatever the AMP level: the loss and its smoothing in full precision.
        return self.loss_fn(self.net(x).astype(ms.float32), y)


class TrainStep(nn.Cell):
    """Forward, scaled backward, worker-mean of gradients, unscale, nn.Momentum update."""

    def __init__(self, net, loss_fn, optimizer, loss_scale, distributed, size):
        super().__init__(auto_prefix=False)
        self.net_with_loss = NetWithLoss(net, loss_fn)
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.scale = float(loss_scale)
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.distributed = distributed
        self.reducer = nn.DistributedGradReducer(self.weights, mean=True, degree=size) if distributed else None
        self.hyper_map = ops.HyperMap()

    def construct(self, x, y):
        loss = self.net_with_loss(x, y)
        sens = ops.fill(loss.dtype, loss.shape, self.scale)
        grads = self.grad(self.net_with_loss, self.weights)(x, y, sens)
        if self.distributed:
            grads = self.reducer(grads)
        if self.scale != 1.0:
            grads = self.hyper_map(ops.partial(_unscale, self.scale), grads)
        self.optimizer(grads)
        return loss


_unscale = ops.MultitypeFuncGraph("unscale")


@_unscale.register("Number", "Tensor")
def _unscale_tensor(scale, grad):
    return grad / scale


def make_optimizer(net, spec, recipe, lrs):
    """nn.Momentum over per-weight-decay groups, with the schedule as its per-step lr array."""
    kinds = {ms_name(name, kind): (name, kind) for name, _, kind, trainable in tensor_specs(spec) if trainable}
    params = net.trainable_params()
    by_decay = {}
    for p in params:
        name, kind = kinds[p.name]
        by_decay.setdefault(weight_decay_of(name, kind, recipe), []).append(p)
    o = recipe.optimizer
    groups = [{"params": ps, "weight_decay": wd} for wd, ps in by_decay.items()]
    # order_params keeps moments and updates in the model's parameter order, as PyTorch's.
    groups.append({"order_params": params})
    return nn.Momentum(groups, learning_rate=ms.Tensor(np.asarray(lrs, np.float32)), momentum=o.momentum,
                       use_nesterov=o.nesterov)


class Adapter:
    """The network, its optimizer and how one step, one forward and one checkpoint go on MindSpore."""

    def __init__(self, world):
        self.world = world
        self.model = self.optimizer = None

    def build(self, spec, recipe, lrs):
        """Seeded cells, nn.Momentum over ``lrs`` (one lr per global step) and the compiled train step."""
        world = self.world
        ms.set_seed(recipe.seed)
        self.lrs = lrs
        # build's default: the process's one resolved FastOptions, as every entry point has.
        net = build(spec, seed=recipe.seed)
        amp = recipe.amp.enabled and world.device != "CPU"
        if recipe.amp.enabled and not amp:
            log(world.rank, "amp: MindSpore has no float16/bfloat16 training kernels on the CPU; training in float32")
        if amp:
            net = ms.amp.auto_mixed_precision(net, recipe.amp.level)
            net.spec = spec
        self.model = net
        self.optimizer = make_optimizer(net, spec, recipe, lrs)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
        cell = TrainStep(net, loss_fn, self.optimizer, recipe.amp.loss_scale if amp else 1.0,
                         world.distributed, world.size)
        cell.set_train(True)
        self.train_step = ms.jit(cell)
        self.infer = ms.jit(net)

    def set_train(self, mode):
        self.model.set_train(mode)

    def step(self, x, y, lr):
        """One step; ``lr`` is already in the optimizer's lr array, at its global_step."""
        del lr
        return float(self.train_step(ms.Tensor(x), ms.Tensor(y)).asnumpy())

    def logits(self, x):
        return self.infer(ms.Tensor(x)).asnumpy().astype(np.float32)

    def batches(self, dataset, index_lists, epoch, workers):
        """(x, y) numpy batches in order; decoded by GeneratorDataset worker processes when workers > 0."""
        source = BatchSource(dataset, index_lists, epoch, label_dtype=np.int32)
        if workers == 0 or len(source) == 0:
            for k in range(len(source)):
                yield source[k]
            return
        import mindspore.dataset as ds

        gen = ds.GeneratorDataset(source, column_names=["image", "label"], shuffle=False,
                                  num_parallel_workers=workers, python_multiprocessing=True)
        yield from gen.create_tuple_iterator(num_epochs=1, output_numpy=True)

    def save(self, path, epoch, step):
        net, optimizer = self.model, self.optimizer
        entries = [{"name": p.name, "data": ms.Tensor(p.asnumpy())} for p in net.get_parameters()]
        entries += [{"name": m.name, "data": ms.Tensor(m.asnumpy())} for m in optimizer.moments]
        entries += [{"name": "global_step", "data": ms.Tensor(np.array([step], np.int32))},
                    {"name": "learning_rate", "data": ms.Tensor(np.asarray(self.lrs, np.float32))}]
        append = {"epoch": int(epoch), "step": int(step)}
        atomic_write(path, lambda tmp: ms.save_checkpoint(entries, tmp, append_dict=append))

    def load(self, path):
        try:
            saved = ms.load_checkpoint(str(path))
        except (ValueError, RuntimeError, OSError) as err:
            raise TrainError(f"{path}: cannot resume from it: {str(err).splitlines()[0]}") from None
        targets = {p.name: p for p in self.model.get_parameters()}
        targets.update({m.name: m for m in self.optimizer.moments})
        missing = [n for n in targets if n not in saved]
        if missing or "step" not in saved:
            raise TrainError(f"{path}: cannot resume from it: lacks {', '.join((missing or ['step'])[:3])}")
        for name, p in targets.items():
            value = saved[name].asnumpy()
            if value.shape != tuple(p.shape):
                raise TrainError(f"{path}: '{name}' has shape {value.shape}, the model {tuple(p.shape)}")
            p.set_data(ms.Tensor(value))
        step = int(np.asarray(saved["step"].asnumpy()).reshape(-1)[0])
        epoch = int(np.asarray(saved["epoch"].asnumpy()).reshape(-1)[0]) if "epoch" in saved else 0
        self.optimizer.global_step.set_data(ms.Tensor(np.array([step], np.int32)))
        return epoch, step

    def canonical_state(self):
        return to_canonical(self.model)

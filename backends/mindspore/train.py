"""MindSpore's training adapter for ``sknet.training.loop``: one process, or data parallel under msrun.

The optimizer is momentum SGD (``momentum.py``) with the recipe's per-step lr array (indexed by its
``global_step``) and one param group per weight-decay value. The train step is our
own cells rather than ``nn.TrainOneStepWithLossScaleCell``: that cell's overflow check
is an Ascend-only op, so on the CPU it cannot run at all; ours multiplies the loss by
the recipe's fixed scale, sums the micro-batches' gradients, divides the worker-averaged
sum by scale x accumulation, drops the update when AMP's gradients are not finite
(mindcv's drop_overflow_update), clips by global norm and steps, which is the same
arithmetic on every device and the same order as the PyTorch adapter.
"""
import os

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from sknet.atomic import atomic_write
from sknet.data import step_normalization
from sknet.params import tensor_specs
from sknet.recipe import backend_device
from sknet.schedule import weight_decay_of
from sknet.training import TrainError
from sknet.training.batches import BatchSource
from sknet.training.cluster import join_failure
from sknet.training.progress import log
from sknet.training.rundir import ema_path

from . import use_device
from .model import build
from .momentum import momentum_optimizer
from .names import ms_name, name_parameters, to_canonical


class World:
    """Rank and size; under msrun (its MS_ROLE/MS_WORKER_NUM environment) data parallel is turned on."""

    def __init__(self, device_name, recipe_device):
        target = backend_device(device_name or recipe_device, "mindspore") or "CPU"
        use_device(target)   # also where an earlier kernel in the process started the runtime on it
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


class Normalize(nn.Cell):
    """uint8 NCHW batches (sknet.data's) to float32 as ``sknet.data.normalize_batch`` does: the same
    float32 operations, the same values; float32 batches pass as they are."""

    def __init__(self, mean, std):
        super().__init__(auto_prefix=False)
        self.scale = ms.Tensor(np.float32(1 / 255))
        self.mean = ms.Tensor(mean.reshape(1, -1, 1, 1))
        self.std = ms.Tensor(std.reshape(1, -1, 1, 1))

    def construct(self, x):
        if x.dtype == ms.uint8:
            return (x.astype(ms.float32) * self.scale - self.mean) / self.std
        return x


class Infer(nn.Cell):
    def __init__(self, net, normalize):
        super().__init__(auto_prefix=False)
        self.net, self.normalize = net, normalize

    def construct(self, x):
        return self.net(self.normalize(x))


class NetWithLoss(nn.Cell):
    def __init__(self, net, loss_fn, normalize):
        super().__init__(auto_prefix=False)
        self.net, self.loss_fn, self.normalize = net, loss_fn, normalize

    def construct(self, x, y):
        # Logits in float32 whatever the AMP level: the loss and its smoothing in full precision.
        return self.loss_fn(self.net(self.normalize(x)).astype(ms.float32), y)


class Gradients(nn.Cell):
    """Forward and backward of one micro-batch: (loss, gradients of loss x scale)."""

    def __init__(self, net, loss_fn, weights, loss_scale, normalize):
        super().__init__(auto_prefix=False)
        self.net_with_loss = NetWithLoss(net, loss_fn, normalize)
        self.weights = weights
        self.scale = float(loss_scale)
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)

    def construct(self, x, y):
        loss = self.net_with_loss(x, y)
        sens = ops.fill(loss.dtype, loss.shape, self.scale)
        return loss, self.grad(self.net_with_loss, self.weights)(x, y, sens)


class Prepare(nn.Cell):
    """Summed micro-batch gradients -> their worker mean / (scale x accumulation), and whether all are finite."""

    def __init__(self, weights, divisor, distributed, size):
        super().__init__(auto_prefix=False)
        self.divisor = float(divisor)
        self.reducer = nn.DistributedGradReducer(weights, mean=True, degree=size) if distributed else None
        self.hyper_map = ops.HyperMap()

    def reduce(self, grads):
        if self.reducer is not None:
            grads = self.reducer(grads)
        if self.divisor != 1.0:
            grads = self.hyper_map(ops.partial(_unscale, self.divisor), grads)
        return grads

    def construct(self, grads):
        grads = self.reduce(grads)
        finite = ops.stack(self.hyper_map(_all_finite, grads)).all()
        return grads, finite


class Apply(nn.Cell):
    """Clip by global L2 norm as torch.nn.utils.clip_grad_norm_ (coef = clip / (norm + 1e-6), at most 1),
    then the optimizer."""

    def __init__(self, optimizer, clip_norm):
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer
        self.clip = clip_norm
        self.hyper_map = ops.HyperMap()

    def construct(self, grads):
        if self.clip is not None:
            norm = ops.sqrt(ops.stack(self.hyper_map(_square_sum, grads)).sum())
            coef = ops.clamp(self.clip / (norm + 1e-6), max=1.0)
            grads = self.hyper_map(ops.partial(_times, coef), grads)
        return self.optimizer(grads)


class TrainStep(nn.Cell):
    """One micro-batch per step and no AMP (every CPU run): gradients, worker mean, clipping and the
    update in one graph, the loss its only output. The same cells and order as the split path;
    one launch instead of three, and no gradient tuple handed back to Python between them."""

    def __init__(self, gradients, prepare, apply):
        super().__init__(auto_prefix=False)
        self.gradients, self.prepare, self.update = gradients, prepare, apply

    def construct(self, x, y):
        loss, grads = self.gradients(x, y)
        grads = self.prepare.reduce(grads)
        return ops.depend(loss, self.update(grads))


class EmaUpdate(nn.Cell):
    """ema += (w - ema) * weight over every parameter (moving statistics too), as torch.lerp_ rounds it."""

    def __init__(self, ema_params, params):
        super().__init__(auto_prefix=False)
        self.ema_params, self.params = ms.ParameterTuple(ema_params), ms.ParameterTuple(params)
        self.hyper_map = ops.HyperMap()

    def construct(self, weight):
        return self.hyper_map(ops.partial(_lerp, weight), self.ema_params, self.params)


_unscale = ops.MultitypeFuncGraph("unscale")
_all_finite = ops.MultitypeFuncGraph("all_finite")
_square_sum = ops.MultitypeFuncGraph("square_sum")
_times = ops.MultitypeFuncGraph("times")
_lerp = ops.MultitypeFuncGraph("lerp")


@_unscale.register("Number", "Tensor")
def _unscale_tensor(scale, grad):
    return grad / scale


@_all_finite.register("Tensor")
def _all_finite_tensor(grad):
    return ops.isfinite(grad).all()


@_square_sum.register("Tensor")
def _square_sum_tensor(grad):
    return (grad.astype(ms.float32) ** 2).sum()


@_times.register("Tensor", "Tensor")
def _times_tensor(coef, grad):
    return grad * coef.astype(grad.dtype)


@_lerp.register("Tensor", "Tensor", "Tensor")
def _lerp_param(weight, ema, value):
    # torch's lerp: start + w (end - start) below w = 0.5, end - (1 - w)(end - start) above.
    diff = value - ema
    return ops.assign(ema, ops.where(weight < 0.5, ema + diff * weight, value - diff * (1.0 - weight)))


def sync_batchnorm(net):
    """Every BatchNorm2d cell as a SyncBatchNorm with the same values and names: statistics over the
    global batch under data parallel."""
    for _, parent in list(net.cells_and_names()):
        for name, child in list(parent.name_cells().items()):
            if type(child) is nn.BatchNorm2d:
                # _BatchNorm keeps 1 - momentum (its running-average convention) as .momentum.
                sync = nn.SyncBatchNorm(child.num_features, eps=child.eps, momentum=1.0 - child.momentum)
                for attr in ("gamma", "beta", "moving_mean", "moving_variance"):
                    getattr(sync, attr).set_data(getattr(child, attr).value())
                if isinstance(parent, (nn.SequentialCell, nn.CellList)):
                    parent[int(name)] = sync  # keeps the container's own list of its cells in step
                else:
                    setattr(parent, name, sync)
    return name_parameters(net)


def set_mode(spec):
    """GRAPH mode, unless stochastic depth draws on the host (PYNATIVE, with ms.jit cells); True for GRAPH.

    On the CPU the same train step compiled by GRAPH mode runs about twice as fast as under
    ms.jit in PYNATIVE (docs/performance.md: skresnet18, 28 px, batch 128), with equal losses.
    """
    graph = spec.block.drop_path_rate == 0
    ms.set_context(mode=ms.GRAPH_MODE if graph else ms.PYNATIVE_MODE)
    return graph


def make_optimizer(net, spec, recipe, lrs):
    """Momentum SGD (``momentum.py``) over per-weight-decay groups, with the schedule as its per-step lr array."""
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
    return momentum_optimizer(groups, ms.Tensor(np.asarray(lrs, np.float32)), o.momentum, o.nesterov)


class Adapter:
    """The network, its optimizer and how one step, one forward and one checkpoint go on MindSpore."""

    def __init__(self, world):
        self.world = world
        self.model = self.optimizer = self.ema = None
        self.skipped = False

    def build(self, spec, recipe, lrs):
        """Seeded cells, nn.Momentum over ``lrs`` (one lr per global step) and the compiled train step."""
        world = self.world
        graph = set_mode(spec)
        compiled = (lambda cell: cell) if graph else ms.jit
        normalize = Normalize(*step_normalization(recipe, spec))
        ms.set_seed(recipe.seed)
        self.lrs = lrs
        # build's default: the process's one resolved FastOptions, as every entry point has.
        net = build(spec, seed=recipe.seed)
        if recipe.sync_bn:
            net = sync_batchnorm(net)
        self.amp = recipe.amp.enabled and world.device != "CPU"
        if recipe.amp.enabled and not self.amp:
            log(world.rank, "amp: MindSpore has no float16/bfloat16 training kernels on the CPU; training in float32")
        if recipe.ema.enabled:
            # Before AMP casts: the average is kept in float32, as timm's and mindcv's are.
            self.ema = build(spec, seed=recipe.seed)
            self.ema.set_train(False)
            for p in self.ema.get_parameters():
                p.name = "ema." + p.name      # one graph holds both nets: names must differ
            self.ema_update = compiled(EmaUpdate(self.ema.get_parameters(), net.get_parameters()))
            self.infer_ema = compiled(Infer(self.ema, normalize))
        if self.amp:
            # mindcv's O2: the network in float16 but its BatchNorm cells (MindSpore's black list).
            net = ms.amp.auto_mixed_precision(net, recipe.amp.level)
            net.spec = spec
        self.model = net
        self.optimizer = make_optimizer(net, spec, recipe, lrs)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
        scale = recipe.amp.loss_scale if self.amp else 1.0
        self.accumulation = recipe.grad.accumulation
        weights = self.optimizer.parameters
        self.gradients = compiled(Gradients(net, loss_fn, weights, scale, normalize).set_train(True))
        self.prepare = compiled(Prepare(weights, scale * self.accumulation, world.distributed, world.size))
        self.apply = compiled(Apply(self.optimizer, recipe.grad.clip_norm))
        # Without AMP no update is ever dropped, so nothing needs the gradients' finiteness on the host.
        self.fused = None
        if self.accumulation == 1 and not self.amp:
            self.fused = compiled(TrainStep(Gradients(net, loss_fn, weights, scale, normalize).set_train(True),
                                          Prepare(weights, scale, world.distributed, world.size),
                                          Apply(self.optimizer, recipe.grad.clip_norm)))
        self.infer = compiled(Infer(net, normalize))

    def set_train(self, mode):
        self.model.set_train(mode)

    def step(self, x, y, lr):
        """One step over ``grad.accumulation`` micro-batches; ``lr`` is already in the optimizer's lr
        array, at its global_step (which a dropped update does not advance: moved on by hand)."""
        del lr
        if self.fused is not None:
            self.skipped = False
            return float(self.fused(ms.Tensor(x), ms.Tensor(y)).asnumpy())
        total, grads = 0.0, None
        for xs, ys in zip(np.split(x, self.accumulation), np.split(y, self.accumulation)):
            loss, part = self.gradients(ms.Tensor(xs), ms.Tensor(ys))
            grads = part if grads is None else tuple(a + b for a, b in zip(grads, part))
            total += float(loss.asnumpy())
        grads, finite = self.prepare(grads)
        self.skipped = self.amp and not bool(finite.asnumpy())
        if self.skipped:
            ops.assign_add(self.optimizer.global_step, ms.Tensor(np.array([1], np.int32)))
        else:
            self.apply(grads)
        return total / self.accumulation

    def update_ema(self, decay):
        self.ema_update(ms.Tensor(1.0 - decay, ms.float32))

    def logits(self, x, ema=False):
        return (self.infer_ema if ema else self.infer)(ms.Tensor(x)).asnumpy().astype(np.float32)

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
        append = {"epoch": int(epoch), "step": int(step)}
        if self.ema is not None:
            # First: a checkpoint on disk always has its EMA file at least as new.
            ema = [{"name": p.name[len("ema."):], "data": ms.Tensor(p.asnumpy())} for p in self.ema.get_parameters()]
            atomic_write(ema_path(path), lambda tmp: ms.save_checkpoint(ema, tmp, append_dict=append))
        entries = [{"name": p.name, "data": ms.Tensor(p.asnumpy())} for p in net.get_parameters()]
        entries += [{"name": m.name, "data": ms.Tensor(m.asnumpy())} for m in optimizer.moments]
        entries += [{"name": "global_step", "data": ms.Tensor(np.array([step], np.int32))},
                    {"name": "learning_rate", "data": ms.Tensor(np.asarray(self.lrs, np.float32))}]
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
        if self.ema is not None:
            self._load_ema(path, step)
        return epoch, step

    def _load_ema(self, path, step):
        where = ema_path(path)
        try:
            saved = ms.load_checkpoint(str(where))
            at = int(np.asarray(saved["step"].asnumpy()).reshape(-1)[0])
            if at != step:
                raise ValueError(f"it is at step {at}, {path} at step {step}")
            for p in self.ema.get_parameters():
                p.set_data(ms.Tensor(saved[p.name[len("ema."):]].asnumpy()))
        except (ValueError, RuntimeError, OSError, KeyError) as err:
            raise TrainError(f"{where}: cannot resume the EMA weights from it: {str(err).splitlines()[0]}") from None

    def canonical_state(self):
        return to_canonical(self.model)

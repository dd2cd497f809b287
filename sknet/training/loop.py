"""The training loop of every backend: plan, epochs, resume, evaluation, checkpoints, metrics, digests.

A backend's ``train`` module gives two classes with the same methods on every backend:

``World(device_name, recipe_device)``
    ``rank``, ``size``, ``device``, ``distributed``; ``all_sum(values)`` (element-wise sum of
    numbers over workers, also the loop's barrier), ``average_buffers(model)`` (BN statistics
    averaged over workers), ``close()`` at the end of a run that went through.
``Adapter(world)``
    ``build(spec, recipe, lrs)`` seeds, builds ``model`` and ``optimizer`` (``lrs``: the lr of
    every global step); ``set_train(mode)``; ``step(x, y, lr) -> loss`` (one optimizer step
    on a NumPy batch); ``logits(x) -> np.ndarray``; ``batches(dataset, index_lists, epoch,
    workers)`` (NumPy (x, y) batches in order); ``save(path, epoch, step)``; ``load(path) ->
    (epoch, step)``; ``canonical_state()`` (canonical name -> array, for the digest);
    ``update_ema(decay)`` (the moving average after a step, recipe ``ema.enabled`` only).
    Attributes after ``build``: ``ema`` (the averaged model, or None; averaged like ``model``
    at checkpoints, saved by ``save`` next to its file as ``<stem>_ema<suffix>``) and
    ``skipped`` (the last step's update was dropped: AMP loss-scale overflow).
    A ``step`` batch holds ``grad.accumulation`` micro-batches of ``batch_size``, in order.
"""
import math
import signal
import time

from ..data import epoch_batches
from ..errors import SKNetError
from ..recipe import global_batch as batch_of
from ..schedule import learning_rates
from .cluster import check_workers_per_node
from .ema import ema_decay
from .evaluation import evaluate
from .failure import RunFailed, Stop, last_good_text, maybe_fault, on_sigterm, worker_failure
from .options import default_out, load_run
from .plan import make_plan, step_batch
from .progress import Progress, log
from .rundir import RunDir, best_top1, ema_scores, epoch_row, state_digest


def run(opts, backend, step_hook=None):
    """Train per ``opts`` with ``backend`` (a module with ``World`` and ``Adapter``); the last metrics row or None.

    ``step_hook(step, model, optimizer)`` is called after every optimizer step (tests).
    """
    recipe, spec, train, val = load_run(opts)
    world = backend.World(opts.device, recipe.device)
    try:
        check_workers_per_node(world)
    except RunFailed:
        # Every rank refuses alike, so all can leave the group together; a rank that exits
        # with it still open may be aborted by gloo (SIGABRT) as its peers go.
        world.close()
        raise
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return Run(opts, backend, world, recipe, spec).train(train, val, step_hook)
    finally:
        signal.signal(signal.SIGTERM, previous)


class Run:
    """One run's state between steps: where it is, the last good checkpoint, the metrics rows."""

    def __init__(self, opts, backend, world, recipe, spec):
        self.opts, self.world, self.recipe, self.spec = opts, world, recipe, spec
        self.name = opts.backend
        self.dir = RunDir(opts.out or default_out(recipe, self.name), self.name)
        self.resume = self.dir.resume_path(opts.resume)
        self.adapter = backend.Adapter(world)
        self.step, self.rows, self.overflows = 0, [], 0

    def checkpoint(self, epoch_done):
        """OUT/last after averaging the BN statistics; every rank waits until it is on disk."""
        self.average_buffers()
        if self.world.rank == 0:
            self.adapter.save(self.dir.last, epoch_done, self.step)
        # Everyone waits for rank 0's write, so no rank reports a checkpoint that is not on disk.
        self.world.all_sum([0.0])
        self.last_good = (self.dir.last, self.step)

    def average_buffers(self):
        self.world.average_buffers(self.adapter.model)
        if self.adapter.ema is not None:
            self.world.average_buffers(self.adapter.ema)

    def after_step(self, value, lr):
        """Stops on a non-finite loss or on a run of overflowing AMP steps; then the EMA update."""
        world, recipe, adapter = self.world, self.recipe, self.adapter
        if not math.isfinite(value):
            # Stop before the weights it produced reach a checkpoint: the one on disk stays good.
            raise RunFailed(f"rank {world.rank}: the loss is {value} at step {self.step + 1} (lr {lr:g}); "
                            f"{last_good_text(self.last_good)}")
        self.overflows = self.overflows + 1 if adapter.skipped else 0
        if self.overflows > recipe.amp.max_overflow_steps:
            raise RunFailed(f"rank {world.rank}: {self.overflows} overflowing AMP steps in a row at step "
                            f"{self.step + 1} (amp.max_overflow_steps {recipe.amp.max_overflow_steps}, each "
                            f"update skipped); {last_good_text(self.last_good)}")
        if recipe.ema.enabled:
            adapter.update_ema(ema_decay(recipe.ema, self.step + 1))

    def train(self, train, val, step_hook):
        world, recipe, adapter = self.world, self.recipe, self.adapter
        if world.rank == 0:
            self.dir.make()
        plan = make_plan(recipe, len(train), world.size, self.opts)
        lrs = learning_rates(recipe, plan.steps_per_epoch, world.size)
        adapter.build(self.spec, recipe, lrs)
        start = 0
        if self.resume is not None:
            _, start = adapter.load(self.resume)
            log(world.rank, f"resumed from {self.resume} at step {start}")
        self.step, self.last_good = start, (self.resume, start)
        self.rows = self.dir.read_metrics(upto_step=start) if world.rank == 0 else []
        global_batch = batch_of(recipe, world.size)
        self.progress = Progress(plan.stop_step, start, global_batch,
                                 enabled=world.rank == 0 and not self.opts.quiet)
        self.t_run = time.monotonic()
        log(world.rank, f"training {self.spec.name} on {world.size} worker(s), {world.device}, "
                        f"{plan.steps_per_epoch} steps/epoch, global batch {global_batch}, "
                        f"steps {start}->{plan.stop_step}")
        try:
            adapter.set_train(True)
            while self.step < plan.stop_step:
                self.epoch(plan, lrs, train, val, step_hook)
        except (Stop, RuntimeError, SKNetError) as err:  # gloo/nccl errors (DistBackendError) are RuntimeErrors
            failure = worker_failure(err, world.rank, world.distributed, self.step, self.last_good)
            if failure is None:
                raise
            raise failure from None
        self.dir.write_digest(world.rank, self.step, state_digest(adapter.canonical_state()))
        world.close()
        log(world.rank, f"done: step {self.step}, {time.monotonic() - self.t_run:.1f} s, checkpoint {self.dir.last}")
        return self.rows[-1] if self.rows else None

    def epoch(self, plan, lrs, train, val, step_hook):
        """The rest of the current epoch; at its end evaluation, a metrics row, last/best and curves."""
        world, recipe, adapter = self.world, self.recipe, self.adapter
        epoch = plan.epoch_of(self.step)
        epoch_end = plan.epoch_end(epoch)
        t_epoch, loss_sum, loss_n = time.monotonic(), 0.0, 0
        order = epoch_batches(len(train), world.size, world.rank, step_batch(recipe), recipe.seed, epoch,
                              shuffle=True, drop_last=recipe.data.drop_last)
        workers = recipe.data.num_workers
        for x, y in adapter.batches(train, plan.remaining(order, self.step), epoch, workers):
            lr = float(lrs[self.step])
            value = adapter.step(x, y, lr)
            self.after_step(value, lr)
            self.step += 1
            loss_sum, loss_n = loss_sum + value, loss_n + 1
            if step_hook is not None:
                step_hook(self.step, adapter.model, adapter.optimizer)
            self.progress.update(self.step, epoch, value, lr)
            if self.step % plan.ckpt_every == 0 and self.step != epoch_end:
                self.checkpoint(epoch)
            maybe_fault(world.rank, self.step)
        if self.step != epoch_end:
            if self.step == plan.stop_step:
                self.checkpoint(epoch)
            return
        self.average_buffers()
        eval_batch = recipe.eval_batch_size or recipe.batch_size
        val_stats = evaluate(adapter, world, val, eval_batch, workers)
        ema_stats = evaluate(adapter, world, val, eval_batch, workers, ema=True) if adapter.ema else None
        train_loss = world.all_sum([loss_sum, loss_n])
        improved = False
        if world.rank == 0:
            now = time.monotonic()
            row = epoch_row(epoch + 1, self.step, train_loss[0] / max(1, train_loss[1]), val_stats,
                            lrs[self.step - 1], self.progress.rate(self.step), now - t_epoch, now - self.t_run)
            if ema_stats is not None:
                row.update(ema_scores(ema_stats))
            improved = row["top1"] > best_top1(self.rows)
            self.rows.append(row)
            self.dir.write_metrics(self.rows)
            ema_text = f", EMA top-1 {row['ema_top1']:.2f} %" if ema_stats is not None else ""
            print(f"epoch {epoch + 1}/{plan.epochs}: val top-1 {row['top1']:.2f} % top-5 "
                  f"{row['top5']:.2f} % loss {row['val_loss']:.4f}{ema_text} ({row['epoch_s']:.0f} s)", flush=True)
        self.checkpoint(epoch + 1)
        if world.rank == 0:
            if improved:
                adapter.save(self.dir.best, epoch + 1, self.step)
            self.dir.plot(self.rows, f"{self.spec.name} / {recipe.name} ({self.name}, {world.size} worker(s))")

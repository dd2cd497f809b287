"""Step arithmetic: steps per epoch, where to stop, when to checkpoint; the same on every backend."""
from dataclasses import dataclass

from .failure import TrainError


@dataclass(frozen=True)
class Plan:
    steps_per_epoch: int
    epochs: int
    stop_step: int
    ckpt_every: int

    @property
    def total_steps(self):
        return self.steps_per_epoch * self.epochs

    def epoch_of(self, step):
        return step // self.steps_per_epoch

    def epoch_end(self, epoch):
        return (epoch + 1) * self.steps_per_epoch

    def remaining(self, epoch_batches, step):
        """The batches of ``step``'s epoch still to run: skips those done before a resume, stops at stop_step."""
        skip = step - self.epoch_of(step) * self.steps_per_epoch
        return epoch_batches[skip:min(len(epoch_batches), skip + self.stop_step - step)]


def step_batch(recipe):
    """Images one worker takes per optimizer step: its accumulated micro-batches, drawn as one batch."""
    return recipe.batch_size * recipe.grad.accumulation


def make_plan(recipe, n_train, world_size, opts):
    from ..data import steps_per_epoch

    per_step = step_batch(recipe)
    spe = steps_per_epoch(n_train, world_size, per_step, recipe.data.drop_last)
    if spe < 1:
        raise TrainError(f"{n_train} training images over {world_size} workers give no full batch of "
                         f"{per_step} (batch_size x grad.accumulation): lower them or use more images")
    total = spe * recipe.epochs
    stop = total if opts.max_steps is None else min(total, opts.max_steps)
    # Default: a checkpoint about every 10 % of an epoch, so a kill loses little.
    every = opts.ckpt_every or max(1, spe // 10)
    return Plan(spe, recipe.epochs, stop, every)

"""SGD with Nesterov momentum that means what ``torch.optim.SGD(nesterov=True)`` means.

MindSpore 2.10's CPU ``ApplyMomentum`` ignores ``use_nesterov``: ``nn.Momentum(...,
use_nesterov=True)`` takes plain momentum steps there (measured: one step of lr 0.1,
momentum 0.9 moves a weight by 0.1 g, not 0.19 g), so a recipe with ``nesterov: true``
trained differently on the two backends. This optimizer keeps ``nn.Momentum``'s groups,
weight decay, lr schedule and moment names (``moments.*``, so checkpoints and resumes are
unchanged) and writes the update with plain tensor ops on every target:
    v <- momentum * v + g;   p <- p - lr * (g + momentum * v)
"""
from mindspore import nn
from mindspore.ops import composite as C
from mindspore.ops import functional as F

_nesterov = C.MultitypeFuncGraph("nesterov")


@_nesterov.register("Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _step(momentum, lr, gradient, weight, moment):
    v = moment * momentum + gradient
    v = F.depend(v, F.assign(moment, v))
    return F.assign(weight, weight - lr * (gradient + momentum * v))


class NesterovMomentum(nn.Momentum):
    def __init__(self, params, learning_rate, momentum, weight_decay=0.0, loss_scale=1.0):
        super().__init__(params, learning_rate, momentum, weight_decay, loss_scale, use_nesterov=False)

    def construct(self, gradients):
        gradients = self.decay_weight(gradients)
        gradients = self.gradients_centralization(gradients)
        gradients = self.scale_grad(gradients)
        lr = self.get_lr()
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        if self.is_group_lr:
            return self.hyper_map_reverse(F.partial(_nesterov, self.momentum), lr, gradients, self.params,
                                          self.moments)
        return self.hyper_map_reverse(F.partial(_nesterov, self.momentum, lr), gradients, self.params, self.moments)


def momentum_optimizer(groups, learning_rate, momentum, nesterov):
    """``nn.Momentum``, or ``NesterovMomentum`` where Nesterov steps are asked for."""
    if nesterov:
        return NesterovMomentum(groups, learning_rate=learning_rate, momentum=momentum)
    return nn.Momentum(groups, learning_rate=learning_rate, momentum=momentum)

"""Adan: adaptive Nesterov momentum (Xie et al., 2022, arXiv:2208.06677).

Betas follow the paper's convention (small numbers are the weight of the NEW value):

    diff_k = g_k - g_{k-1}                    (g_{-1} := g_0, so the first difference is zero)
    m_k = (1 - b1) m_{k-1} + b1 g_k                               first moment
    v_k = (1 - b2) v_{k-1} + b2 diff_k                            moment of gradient differences
    n_k = (1 - b3) n_{k-1} + b3 (g_k + (1 - b2) diff_k)^2         second moment (Nesterov gradient)
    update = (m_k / c1 + (1 - b2) v_k / c2) / (sqrt(n_k / c3) + eps),  c_i = 1 - (1 - b_i)^k
    p <- (p - lr * update) / (1 + lr * weight_decay)              proximal (decoupled) weight decay

The bias corrections c_i are those of the authors' reference code (the paper's Algorithm 1 omits
them). The official PyTorch code's betas (0.98, 0.92, 0.99) are 1 minus ours.
"""
import math

import torch
from torch.optim import Optimizer

__all__ = ["Adan"]


class Adan(Optimizer):
    """Adan optimizer; `foreach=None` vectorises with torch._foreach ops when all params are on CUDA."""

    def __init__(self, params, lr=1e-3, betas=(0.02, 0.08, 0.01), eps=1e-8, weight_decay=0.0,
                 foreach=None):
        if lr < 0.0:
            raise ValueError(f"Adan: invalid learning rate {lr} (must be >= 0)")
        if eps < 0.0:
            raise ValueError(f"Adan: invalid eps {eps} (must be >= 0)")
        if len(betas) != 3 or not all(0.0 < b <= 1.0 for b in betas):
            raise ValueError(f"Adan: betas must be three numbers in (0, 1] (paper convention, "
                             f"e.g. (0.02, 0.08, 0.01)), got {betas}")
        if weight_decay < 0.0:
            raise ValueError(f"Adan: invalid weight_decay {weight_decay} (must be >= 0)")
        defaults = dict(lr=lr, betas=tuple(float(b) for b in betas), eps=eps,
                        weight_decay=weight_decay, foreach=foreach)
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, prev_grads, steps = \
                [], [], [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Adan does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_diff"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    # g_{-1} := g_0: the first gradient difference is zero
                    state["prev_grad"] = p.grad.detach().clone(memory_format=torch.preserve_format)
                state["step"] += 1
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_diffs.append(state["exp_avg_diff"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                prev_grads.append(state["prev_grad"])
                steps.append(int(state["step"]))
            if not params:
                continue

            foreach = group["foreach"]
            if foreach is None:
                foreach = all(p.is_cuda for p in params)
            kernel = _adan_foreach if foreach else _adan_single_tensor
            kernel(params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, prev_grads, steps,
                   lr=group["lr"], betas=group["betas"], eps=group["eps"],
                   weight_decay=group["weight_decay"])
        return loss


def _bias_corrections(step, betas):
    b1, b2, b3 = betas
    return 1.0 - (1.0 - b1) ** step, 1.0 - (1.0 - b2) ** step, 1.0 - (1.0 - b3) ** step


def _adan_single_tensor(params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, prev_grads, steps,
                        *, lr, betas, eps, weight_decay):
    b1, b2, b3 = betas
    for p, g, m, v, n, g_prev, step in zip(params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs,
                                           prev_grads, steps):
        c1, c2, c3 = _bias_corrections(step, betas)
        diff = g - g_prev
        m.mul_(1.0 - b1).add_(g, alpha=b1)
        v.mul_(1.0 - b2).add_(diff, alpha=b2)
        nesterov_grad = g.add(diff, alpha=1.0 - b2)
        n.mul_(1.0 - b3).addcmul_(nesterov_grad, nesterov_grad, value=b3)
        denom = n.sqrt().div_(math.sqrt(c3)).add_(eps)
        update = m.div(c1).add_(v.mul((1.0 - b2) / c2)).div_(denom)
        p.add_(update, alpha=-lr)
        if weight_decay != 0.0:
            p.div_(1.0 + lr * weight_decay)
        g_prev.copy_(g)


def _adan_foreach(params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, prev_grads, steps,
                  *, lr, betas, eps, weight_decay):
    b1, b2, b3 = betas
    corrections = [_bias_corrections(step, betas) for step in steps]
    diffs = torch._foreach_sub(grads, prev_grads)
    torch._foreach_mul_(exp_avgs, 1.0 - b1)
    torch._foreach_add_(exp_avgs, grads, alpha=b1)
    torch._foreach_mul_(exp_avg_diffs, 1.0 - b2)
    torch._foreach_add_(exp_avg_diffs, diffs, alpha=b2)
    nesterov_grads = torch._foreach_add(grads, diffs, alpha=1.0 - b2)
    torch._foreach_mul_(exp_avg_sqs, 1.0 - b3)
    torch._foreach_addcmul_(exp_avg_sqs, nesterov_grads, nesterov_grads, value=b3)
    del diffs, nesterov_grads
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, [math.sqrt(c[2]) for c in corrections])
    torch._foreach_add_(denoms, eps)
    updates = torch._foreach_div(exp_avgs, [c[0] for c in corrections])
    torch._foreach_add_(updates, torch._foreach_mul(exp_avg_diffs,
                                                    [(1.0 - b2) / c[1] for c in corrections]))
    torch._foreach_div_(updates, denoms)
    torch._foreach_add_(params, updates, alpha=-lr)
    if weight_decay != 0.0:
        torch._foreach_div_(params, 1.0 + lr * weight_decay)
    torch._foreach_copy_(prev_grads, grads)

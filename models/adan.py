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
import functools
import math
import warnings

import torch
from torch.optim import Optimizer

__all__ = ["Adan", "KERNELS"]

# the three kernels of Adan.step (same update, same state), as Adan's keyword arguments
KERNELS = {"loop": dict(fused=False, foreach=False), "foreach": dict(fused=False, foreach=True),
           "fused": dict(fused=True)}


class Adan(Optimizer):
    """Adan optimizer. Three kernels compute the same update (to float rounding): `fused=True` (the
    default) runs one torch.compile'd pass per tensor (_adan_fused: reads p, g, m, v, n, g_prev once,
    writes them once), falling back with a warning to the other two where compiling fails;
    `fused=False` takes the torch._foreach kernel when `foreach` is True (or None with every param on
    CUDA), else the per-tensor loop. The state is the same for all three, so a checkpoint saved with
    one continues with another."""

    def __init__(self, params, lr=1e-3, betas=(0.02, 0.08, 0.01), eps=1e-8, weight_decay=0.0,
                 foreach=None, fused=True):
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
                        weight_decay=weight_decay, foreach=foreach, fused=bool(fused))
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("fused", False)

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

            if group["fused"] and _fused_kernel() is not None:
                kernel = _adan_fused
            elif _use_foreach(group["foreach"], params):
                kernel = _adan_foreach
            else:
                kernel = _adan_single_tensor
            kernel(params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, prev_grads, steps,
                   lr=group["lr"], betas=group["betas"], eps=group["eps"],
                   weight_decay=group["weight_decay"])
        return loss


def _use_foreach(foreach, params):
    """`foreach=None` picks the vectorised kernel only when every param is on CUDA. On CPU the
    loop stays: at the default model size (130 M params, 1 thread) the vectorised step took 884 ms
    against the loop's 934 ms (1.06x; 1.47x at the demo size), under the 1.2x that a change of
    default would need (BENCHMARKS.md, "Adan step: loop vs foreach (CPU)")."""
    if foreach is not None:
        return bool(foreach)
    return all(p.is_cuda for p in params)


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
    """The same update with torch._foreach ops and no list-sized temporaries: prev_grads is the
    scratch buffer (-diff, then the Nesterov gradient, then the denominator) and gets g at the end;
    the parameter update is two fused addcdiv passes. sqrt(c3) is folded into the scalars:
    (m/c1 + (1-b2) v/c2) / (sqrt(n)/sqrt(c3) + eps) = sqrt(c3) (...) / (sqrt(n) + eps sqrt(c3))."""
    b1, b2, b3 = betas
    corrections = [_bias_corrections(step, betas) for step in steps]
    root_c3 = [math.sqrt(c3) for _, _, c3 in corrections]
    scratch = prev_grads
    torch._foreach_lerp_(exp_avgs, grads, b1)                         # m
    torch._foreach_sub_(scratch, grads)                               # g_prev - g = -diff
    torch._foreach_mul_(exp_avg_diffs, 1.0 - b2)
    torch._foreach_add_(exp_avg_diffs, scratch, alpha=-b2)            # v
    torch._foreach_mul_(scratch, b2 - 1.0)
    torch._foreach_add_(scratch, grads)                               # g + (1 - b2) diff
    torch._foreach_mul_(exp_avg_sqs, 1.0 - b3)
    torch._foreach_addcmul_(exp_avg_sqs, scratch, scratch, value=b3)  # n
    torch._foreach_copy_(scratch, exp_avg_sqs)
    torch._foreach_sqrt_(scratch)
    torch._foreach_add_(scratch, [eps * r for r in root_c3])          # sqrt(n) + eps sqrt(c3)
    torch._foreach_addcdiv_(params, exp_avgs, scratch,
                            [-lr * r / c1 for r, (c1, _, _) in zip(root_c3, corrections)])
    torch._foreach_addcdiv_(params, exp_avg_diffs, scratch,
                            [-lr * (1.0 - b2) * r / c2 for r, (_, c2, _) in zip(root_c3, corrections)])
    if weight_decay != 0.0:
        torch._foreach_div_(params, 1.0 + lr * weight_decay)
    torch._foreach_copy_(prev_grads, grads)


def _adan_update(p, g, m, v, n, g_prev, scalars):
    """The whole update of one flattened tensor as one expression graph, for torch.compile to fuse
    into a single pass. `scalars` = [lr, b1, b2, b3, c1, c2, sqrt(c3), eps, weight_decay] as a tensor,
    so a new step (new lr and bias corrections) reuses the compiled code."""
    lr, b1, b2, b3, c1, c2, root_c3, eps, weight_decay = scalars.unbind()
    diff = g - g_prev
    m.copy_(m * (1.0 - b1) + b1 * g)
    v.copy_(v * (1.0 - b2) + b2 * diff)
    nesterov_grad = g + (1.0 - b2) * diff
    n.copy_(n * (1.0 - b3) + b3 * nesterov_grad * nesterov_grad)
    update = (m / c1 + (1.0 - b2) * v / c2) / (n.sqrt() / root_c3 + eps)
    p.copy_((p - lr * update) / (1.0 + lr * weight_decay))
    g_prev.copy_(g)


@functools.cache
def _fused_kernel():
    """_adan_update compiled once per process (dynamic shapes: one graph serves every flattened
    tensor), or None where torch.compile cannot run here (tried on a small tensor; warns once)."""
    compiled = torch.compile(_adan_update, dynamic=True)
    try:
        probe = [torch.ones(3) for _ in range(6)]
        compiled(*probe, torch.tensor([0.1, 0.02, 0.08, 0.01, 0.02, 0.08, 0.1, 1e-8, 0.0]))
    except Exception as err:  # no C++ compiler, an unsupported platform, ...: the loop still works
        warnings.warn(f"Adan: torch.compile of the fused kernel failed here ({type(err).__name__}: "
                      f"{str(err).splitlines()[0] if str(err) else ''}); using the unfused kernels. "
                      f"Adan(..., fused=False) skips the attempt.")
        return None
    return compiled


def _adan_fused(params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs, prev_grads, steps,
                *, lr, betas, eps, weight_decay):
    """One compiled pass per tensor (_adan_update over flattened views); a tensor that is not
    contiguous takes the loop. Measured 2.9x faster than the loop at the default size on CPU, 1.1x at
    make demo's (BENCHMARKS.md, "Training at the hardware's speed")."""
    kernel = _fused_kernel()
    b1, b2, b3 = betas
    rows = {}
    for p, g, m, v, n, g_prev, step in zip(params, grads, exp_avgs, exp_avg_diffs, exp_avg_sqs,
                                           prev_grads, steps):
        tensors = (p, g, m, v, n, g_prev)
        if not all(t.is_contiguous() for t in tensors) or len({t.dtype for t in tensors}) > 1:
            _adan_single_tensor([p], [g], [m], [v], [n], [g_prev], [step], lr=lr, betas=betas, eps=eps,
                                weight_decay=weight_decay)
            continue
        dtype = torch.float64 if p.dtype == torch.float64 else torch.float32  # the scalars' precision
        key = (step, p.device, dtype)
        if key not in rows:
            c1, c2, c3 = _bias_corrections(step, betas)
            rows[key] = torch.tensor([lr, b1, b2, b3, c1, c2, math.sqrt(c3), eps, weight_decay],
                                     dtype=dtype, device=p.device)
        kernel(*(t.view(-1) for t in tensors), rows[key])

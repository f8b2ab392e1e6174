"""Adan optimizer: equals a plain reference implementation, minimises a quadratic, resumes exactly."""
import io
import math
from pathlib import Path

import pytest
import torch

from models.adan import Adan  # noqa: E402


def make_problem(seed=0):
    """A small least-squares problem with two parameter tensors."""
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(32, 5, generator=g)
    targets = torch.randn(32, 3, generator=g)
    weight = torch.randn(3, 5, generator=g)
    bias = torch.randn(3, generator=g)
    return inputs, targets, weight, bias


def loss_fn(params, inputs, targets):
    weight, bias = params
    return ((inputs @ weight.T + bias - targets) ** 2).mean() + (weight ** 4).sum() * 0.01


def reference_adan(params, grad_of, steps, lr, betas, eps, weight_decay):
    """Straight from the paper (betas as weights of the new value) + bias correction + proximal decay."""
    b1, b2, b3 = betas
    params = [p.clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    n = [torch.zeros_like(p) for p in params]
    prev = None
    for k in range(1, steps + 1):
        grads = grad_of(params)
        if prev is None:
            prev = grads
        for i, (p, g, gp) in enumerate(zip(params, grads, prev)):
            m[i] = (1 - b1) * m[i] + b1 * g
            v[i] = (1 - b2) * v[i] + b2 * (g - gp)
            n[i] = (1 - b3) * n[i] + b3 * (g + (1 - b2) * (g - gp)) ** 2
            m_hat = m[i] / (1 - (1 - b1) ** k)
            v_hat = v[i] / (1 - (1 - b2) ** k)
            n_hat = n[i] / (1 - (1 - b3) ** k)
            step_size = lr / (torch.sqrt(n_hat) + eps)
            params[i] = (p - step_size * (m_hat + (1 - b2) * v_hat)) / (1 + lr * weight_decay)
        prev = grads
    return params


def run_adan(params, grad_of, steps, **kwargs):
    params = [torch.nn.Parameter(p.clone()) for p in params]
    opt = Adan(params, **kwargs)
    for _ in range(steps):
        grads = grad_of(params)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_matches_reference(foreach, weight_decay):
    inputs, targets, weight, bias = make_problem()

    def grad_of(params):
        params = [p.detach().requires_grad_(True) for p in params]
        return list(torch.autograd.grad(loss_fn(params, inputs, targets), params))

    kwargs = dict(lr=0.05, betas=(0.02, 0.08, 0.01), eps=1e-8, weight_decay=weight_decay)
    expected = reference_adan([weight, bias], grad_of, 20, **kwargs)
    got = run_adan([weight, bias], grad_of, 20, foreach=foreach, **kwargs)
    for e, g in zip(expected, got):
        assert torch.allclose(g, e, atol=1e-6, rtol=0), (g - e).abs().max()
    # the test is not vacuous: the parameters moved
    assert (got[0] - weight).abs().max() > 0.1


def test_minimises_quadratic():
    torch.manual_seed(0)
    centre = torch.tensor([3.0, -2.0, 0.5, 1.5])
    curvature = torch.tensor([1.0, 10.0, 0.1, 3.0])
    x = torch.nn.Parameter(torch.zeros(4))
    opt = Adan([x], lr=0.05)
    start = (0.5 * curvature * (x.detach() - centre) ** 2).sum().item()
    for _ in range(1500):
        opt.zero_grad()
        loss = (0.5 * curvature * (x - centre) ** 2).sum()
        loss.backward()
        opt.step()
    final = (0.5 * curvature * (x.detach() - centre) ** 2).sum().item()
    assert final < 1e-4 * start, (start, final)
    assert torch.allclose(x.detach(), centre, atol=2e-2)


@pytest.mark.parametrize("foreach", [False, True])
def test_state_dict_resume_is_bitwise(foreach):
    torch.manual_seed(0)

    def make():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))

    data = torch.randn(16, 6)
    target = torch.randn(16, 2)

    def train(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            ((model(data) - target) ** 2).mean().backward()
            opt.step()

    def new_opt(model):
        return Adan(model.parameters(), lr=0.01, weight_decay=0.02, foreach=foreach)

    # uninterrupted: 10 + 10 steps
    model_a = make()
    opt_a = new_opt(model_a)
    train(model_a, opt_a, 10)
    buffer = io.BytesIO()
    torch.save({"model": model_a.state_dict(), "opt": opt_a.state_dict()}, buffer)
    train(model_a, opt_a, 10)

    # resumed from the saved state after 10 steps
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model_b = make()
    model_b.load_state_dict(saved["model"])
    opt_b = new_opt(model_b)
    opt_b.load_state_dict(saved["opt"])
    assert opt_b.state_dict()["state"][0]["step"] == 10
    train(model_b, opt_b, 10)

    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)
    for sa, sb in zip(opt_a.state_dict()["state"].values(), opt_b.state_dict()["state"].values()):
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key


def test_rejects_bad_arguments():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="betas"):
        Adan(p, betas=(0.98, 0.92))
    with pytest.raises(ValueError, match="learning rate"):
        Adan(p, lr=-1.0)


def test_skips_params_without_grad_and_counts_steps_per_param():
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(3))
    opt = Adan([a, b], lr=0.1)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3))
    assert opt.state[a]["step"] == 1 and b not in opt.state
    # first Adan step with zero difference: update = m_hat / (sqrt(n_hat) + eps) = g / |g|
    assert torch.allclose(a.detach(), torch.full((3,), 0.9), atol=1e-6)
    assert math.isclose(opt.state[a]["exp_avg"][0].item(), 0.02, rel_tol=1e-6)

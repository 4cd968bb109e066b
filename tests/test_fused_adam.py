"""aevb's direct call of Adam's fused kernel against ``torch.optim.Adam(fused=True).step()``.

The same parameters, moments and step counts bit for bit, over steps taken and steps
skipped (``found_inf``), through a state-dict round trip (resume), with hooks still run;
and other optimizers keep their own ``step()``.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from aevb import fused_adam


def _net(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)


def _train(net: nn.Module, opt: torch.optim.Adam, direct: bool, skips: set[int]) -> None:
    g = torch.Generator().manual_seed(1)
    for i in range(12):
        for group in opt.param_groups:
            group["lr"] = 1e-2 / (1 + i)  # a schedule, as the trainer sets it
        x = torch.randn(8, 6, generator=g, dtype=next(net.parameters()).dtype)
        opt.zero_grad(set_to_none=True)
        net(x).pow(2).mean().backward()
        found_inf = torch.tensor(float(i in skips))
        if direct:
            fused_adam.step(opt, found_inf)
        else:
            opt.found_inf = found_inf
            opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_direct_fused_step_is_bit_identical_to_torch_optim(dtype):
    nets, opts = [], []
    for direct in (False, True):
        net = _net(dtype)
        # the direct step on aevb's Adam against torch.optim's own step (here torch._dynamo
        # is already imported: the unwrapped path is checked in a fresh process below)
        adam = fused_adam.Adam if direct else torch.optim.Adam
        opt = adam(net.parameters(), lr=1e-2, eps=1e-6, fused=True)
        assert fused_adam.covers(opt)
        _train(net, opt, direct, skips={0, 5, 6})
        nets.append(net)
        opts.append(opt)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a, b)
    sa, sb = opts[0].state_dict(), opts[1].state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for k in sa["state"]:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sa["state"][k][name], sb["state"][k][name]), (k, name)
    assert float(sb["state"][0]["step"]) == 12 - 3  # skipped steps are not counted


def test_direct_step_continues_a_loaded_state_bit_for_bit():
    net_a, net_b = _net(torch.float32), _net(torch.float32)
    opt_a = torch.optim.Adam(net_a.parameters(), lr=1e-2, fused=True)
    _train(net_a, opt_a, direct=False, skips=set())
    opt_b = fused_adam.Adam(net_b.parameters(), lr=1e-2, fused=True)
    net_b.load_state_dict(net_a.state_dict())
    # deep-copied as a checkpoint file would be (load_state_dict keeps float32 step tensors
    # as they are: shared, both optimizers would count in the same tensors)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    _train(net_a, opt_a, direct=False, skips={3})
    _train(net_b, opt_b, direct=True, skips={3})
    for a, b in zip(net_a.parameters(), net_b.parameters(), strict=True):
        assert torch.equal(a, b)


def test_hooks_run_and_other_optimizers_take_their_own_step():
    net = _net(torch.float32)
    opt = torch.optim.Adam(net.parameters(), fused=True)
    calls = []
    handle = register_optimizer_step_post_hook(lambda o, a, k: calls.append("global"))
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    try:
        _train(net, opt, direct=True, skips=set())
    finally:
        handle.remove()
    assert calls == ["pre", "global"] * 12
    for other in (
        torch.optim.Adam(net.parameters(), amsgrad=True, fused=True),
        torch.optim.Adam(net.parameters(), fused=False),
        torch.optim.SGD(net.parameters(), lr=0.1),
    ):
        assert not fused_adam.covers(other)
    sgd = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.clone() for p in net.parameters()]
    _train(net, sgd, direct=True, skips=set())  # falls back to sgd.step()
    assert not all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_aevb_adam_does_not_import_torch_dynamo():
    """Building, stepping, saving, loading and zeroing aevb's Adam leaves torch._dynamo
    unimported (1.2-1.5 s of every training process), with torch.optim.Adam's numbers:
    in a fresh process aevb's Adam trains first (the unwrapped methods), then
    torch.optim.Adam (which imports torch._dynamo) from the same start; bit for bit equal."""
    code = """
import copy, sys, torch
from aevb import fused_adam
imported = []
finals = []
for adam in (fused_adam.Adam, torch.optim.Adam):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    opt = adam(list(net[0].parameters()), lr=1e-2, fused=True)
    opt.add_param_group({"params": list(net[2].parameters())})
    g = torch.Generator().manual_seed(1)
    for i in range(6):
        if i == 3:  # a checkpoint round trip half-way, as a resume does
            opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        opt.zero_grad()
        net(torch.randn(5, 3, generator=g)).pow(2).sum().backward()
        fused_adam.step(opt, torch.zeros(()))
    imported.append("torch._dynamo" in sys.modules)
    finals.append([p.detach().clone() for p in net.parameters()])
    finals[-1] += [v for s in opt.state_dict()["state"].values() for v in s.values()]
same = all(torch.equal(a, b) for a, b in zip(*finals, strict=True))
print(*imported, same)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "True", "True"]


def test_aevb_adam_zero_grad_sets_every_gradient_to_none_or_zero():
    net = _net(torch.float32)
    opt = fused_adam.Adam(net.parameters(), fused=True)
    net(torch.randn(4, 6)).sum().backward()
    opt.zero_grad(set_to_none=False)  # torch.optim's own path
    assert all(p.grad is not None and not p.grad.any() for p in net.parameters())
    net(torch.randn(4, 6)).sum().backward()
    opt.zero_grad()
    assert all(p.grad is None for p in net.parameters())

"""Adam's fused step called without torch.optim's per-step Python: the same kernel and state.

``torch.optim.Adam(fused=True).step()`` runs one fused kernel (``torch._fused_adam_``)
inside a few hundred microseconds of Python per step (the torch._dynamo guards of its
wrappers, step hooks, lazy-state checks, grouping the tensors by device and dtype, a
profiler range). On Burda et al.'s 784-200-200-50 model at batch 128 that Python is
more than the kernel itself (measured in docs/benchmarks.md, "Training step").

:func:`step` calls the kernel directly on the optimizer's own parameter groups and
state, created as torch.optim creates it, so the optimizer is still the one object that
is saved, loaded and resumed; the numbers are bit-identical to ``optimizer.step()``
(``tests/test_fused_adam.py``). Step hooks registered on the optimizer or globally
(``torch.optim.optimizer.register_optimizer_step_post_hook``) still run. An optimizer
this path does not cover (not Adam, not fused, AMSGrad, a tensor learning rate,
parameters of several devices or dtypes in one group) takes ``optimizer.step()``.

:class:`Adam` is ``torch.optim.Adam`` that does not import ``torch._dynamo`` (1.2-1.5 s
of a process's start, measured by ``benchmarks/process_cost.py``) while nothing has
imported it: torch 2.13 wraps ``add_param_group``, ``state_dict``, ``load_state_dict``
and ``zero_grad`` in ``torch._disable_dynamo``, whose first call imports torch._dynamo
only to mark the method "not to be traced". With torch._dynamo not loaded nothing can
be tracing, so the unwrapped method is the same; once it is loaded (``--compile``,
or a user's own ``torch.compile``) the wrapped method runs, as in torch.optim. Only a
method whose wrapper is ``torch._disable_dynamo``'s is unwrapped (any other decorator a
later torch adds is kept). ``zero_grad()`` (``set_to_none``, the default) sets the
gradients to None itself, without torch.optim's profiler range (~0.1 ms a step); under
``torch.compile`` it is traced (plain Python, no graph break) rather than skipped.
"""

from __future__ import annotations

import sys
from itertools import chain

import torch
from torch import Tensor
from torch.optim import optimizer as _optim_module

# The code of the function ``torch._disable_dynamo`` wraps a method in (one for all).
_DISABLE_DYNAMO_CODE = getattr(torch._disable_dynamo(lambda: None), "__code__", None)


def _untraced(name: str):
    """``torch.optim.Adam.<name>`` without its ``torch._disable_dynamo`` wrapper while
    torch._dynamo is not imported (the wrapper's only effect is to import it then)."""
    wrapped = getattr(torch.optim.Adam, name)
    is_disable_dynamo = getattr(wrapped, "__code__", None) is _DISABLE_DYNAMO_CODE
    raw = getattr(wrapped, "__wrapped__", None) if is_disable_dynamo else None

    def method(self, *args, **kwargs):
        if raw is None or "torch._dynamo" in sys.modules:
            return wrapped(self, *args, **kwargs)
        return raw(self, *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = wrapped.__doc__
    return method


class Adam(torch.optim.Adam):
    """``torch.optim.Adam``, the same state and numbers, built without importing torch._dynamo."""

    add_param_group = _untraced("add_param_group")
    state_dict = _untraced("state_dict")
    load_state_dict = _untraced("load_state_dict")
    _zero_grad = _untraced("zero_grad")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``Optimizer.zero_grad``; with ``set_to_none`` (the default) the gradients are set
        to None directly, without torch.optim's profiler range around it (~0.1 ms a step
        on a CPU, measured: a few percent of a small model's training step)."""
        if not set_to_none:
            return self._zero_grad(set_to_none)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


def covers(optimizer: torch.optim.Optimizer) -> bool:
    """Whether :func:`step` can take this optimizer's step itself (else it calls ``step()``)."""
    if type(optimizer) not in (torch.optim.Adam, Adam) or not hasattr(torch, "_fused_adam_"):
        return False
    for group in optimizer.param_groups:
        if not group.get("fused") or group.get("amsgrad") or group.get("differentiable"):
            return False
        if group.get("decoupled_weight_decay") or group.get("capturable"):
            return False
        if isinstance(group["lr"], Tensor):
            return False
        if len({(p.device, p.dtype) for p in group["params"]}) > 1:
            return False
    return True


def _hooks(optimizer: torch.optim.Optimizer, kind: str) -> list:
    """The step hooks of ``kind`` ('pre' or 'post'): global ones first, as torch.optim runs them."""
    glob = getattr(_optim_module, f"_global_optimizer_{kind}_hooks", {})
    own = getattr(optimizer, f"_optimizer_step_{kind}_hooks", {})
    return list(chain(glob.values(), own.values()))


def _state(optimizer: torch.optim.Optimizer, p: Tensor) -> dict[str, Tensor]:
    """``p``'s Adam state, created as ``torch.optim.Adam`` (fused) creates it at its first step."""
    state = optimizer.state[p]
    if not state:
        state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


@torch.no_grad()
def step(optimizer: torch.optim.Optimizer, found_inf: Tensor) -> None:
    """One Adam step, skipped (weights, moments and step count unchanged) where ``found_inf``
    (a float32 scalar on the parameters' device) is 1.

    Args:
        optimizer: a ``torch.optim.Adam`` with ``fused=True``; any other optimizer takes its
            own ``step()`` (given ``found_inf`` if fused, else skipped by a host sync).
        found_inf: ``[]`` 1.0 to skip this step, 0.0 to take it.
    """
    if not covers(optimizer):
        if optimizer.defaults.get("fused"):  # the fused kernels honour found_inf
            optimizer.found_inf = found_inf  # type: ignore[attr-defined]
            optimizer.step()
        elif not bool(found_inf):
            optimizer.step()
        return
    for hook in _hooks(optimizer, "pre"):
        hook(optimizer, (), {})
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        states = [_state(optimizer, p) for p in params]
        steps = [s["step"] for s in states]
        beta1, beta2 = group["betas"]
        # what torch.optim.adam._fused_adam does for one device and dtype
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            params,
            [p.grad for p in params],
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],
            steps,
            amsgrad=False,
            lr=group["lr"],
            beta1=float(beta1),
            beta2=float(beta2),
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
            grad_scale=None,
            found_inf=found_inf,
        )
        torch._foreach_sub_(steps, [found_inf] * len(steps))
    for hook in _hooks(optimizer, "post"):
        hook(optimizer, (), {})

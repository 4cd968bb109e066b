"""The evaluator's fast elementwise forms, against the exact functions.

On a CPU the evaluator computes ``sum_d softplus(t_d)`` through the sigmoid (products of
``sigmoid(|t|)`` in blocks, one log per block) and tanh as ``2 sigmoid(2x) - 1``: both must
equal the exact functions to float64 rounding in float64, stay within the float32 error
the docstrings state, never under- or overflow at any magnitude, and leave the reused
buffers of :class:`aevb.workspace.Workspace` equal to a fresh computation. The float32
matmuls of the hot loop run on oneDNN's linear where it works (x86-64 builds): it must
give F.linear's numbers to float32 rounding, and torch.mm must take over where it does not.
"""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F

from aevb import workspace
from aevb.distributions import sum_log_sigmoid_, sum_softplus_
from aevb.models.networks import tanh_
from aevb.workspace import Workspace, group_size, linear_into, onednn_linear


def softplus(t: torch.Tensor) -> torch.Tensor:
    """Exact softplus (F.softplus returns t itself above its threshold of 20)."""
    return torch.logaddexp(t, torch.zeros(()).to(t))


@pytest.mark.parametrize("d", [1, 7, 16, 784, 1024, 3072])
def test_sum_softplus_equals_softplus_sum_in_float64(d):
    g = torch.Generator().manual_seed(d)
    t = torch.randn(3, 5, d, generator=g, dtype=torch.float64) * 8
    exact = softplus(t).sum(-1)
    torch.testing.assert_close(sum_softplus_(t.clone()), exact, rtol=1e-13, atol=1e-12)


def test_sum_softplus_float32_is_as_accurate_as_the_cross_entropy():
    # a trained model's logit scale: most pixels confident, sums ~ 135 nats as on MNIST
    g = torch.Generator().manual_seed(0)
    t = torch.randn(256, 784, generator=g) * 4 - 6
    exact = softplus(t.double()).sum(-1)
    fast = sum_softplus_(t.clone()).double() - exact
    cross_entropy = F.softplus(t).sum(-1).double() - exact  # 1-ulp softplus, float32 sum
    # float32 resolves ~1e-5 at 135: both errors are that rounding, not a bias
    assert fast.abs().max() < 1.5 * cross_entropy.abs().max() + 2e-6
    assert abs(fast.mean()) < 3e-6


@pytest.mark.parametrize("scale", [1e-3, 30.0, 1e4, 1e30])
def test_sum_softplus_never_under_or_overflows(scale):
    t = torch.linspace(-1, 1, 784).repeat(2, 1) * scale  # [2, 784]
    fast = sum_softplus_(t.clone())
    exact = softplus(t.double()).sum(-1)
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast.double(), exact, rtol=1e-5, atol=1e-3)


def test_sum_softplus_with_a_work_buffer_is_the_same():
    t = torch.randn(4, 100) * 5
    work = torch.full_like(t, float("nan"))
    assert torch.equal(sum_softplus_(t.clone(), work=work), sum_softplus_(t.clone()))


def test_tanh_in_place_is_tanh():
    x = torch.linspace(-20, 20, 100_001)
    y = tanh_(x.clone())
    assert (y.double() - torch.tanh(x.double())).abs().max() < 2e-7
    assert y.abs().max() <= 1.0
    x64 = x.double()
    torch.testing.assert_close(tanh_(x64.clone()), torch.tanh(x64), rtol=0, atol=1e-15)


def test_onednn_linear_is_linear_to_float32_rounding():
    """oneDNN's linear, which the evaluator's float32 matmuls use on a CPU, against F.linear
    in float64: within the error bound of a float32 dot product of that length, at the
    decoders' shapes (narrow and wide outputs, odd row counts)."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert workspace._onednn_works()  # it is in every x86-64 build of torch
    elif not workspace._onednn_works():
        pytest.skip("no oneDNN linear in this build: torch.mm is used (tested below)")
    g = torch.Generator().manual_seed(0)
    for rows, f, o in ((70, 33, 17), (500, 50, 200), (129, 200, 784), (64, 400, 1), (3, 7, 5)):
        h, w, b = (torch.randn(*s, generator=g) for s in ((rows, f), (o, f), (o,)))
        exact = F.linear(h.double(), w.double(), b.double())
        for bias in (b, None):
            got = onednn_linear(h, w, bias)
            want = exact if bias is not None else exact - b.double()
            assert got.shape == (rows, o) and got.dtype == torch.float32
            # |error| <= f eps sum_j |h_j w_j| (+ the bias), eps = 6e-8
            scale = h.double().abs() @ w.double().abs().t() + b.double().abs()
            assert ((got.double() - want).abs() <= 1e-7 * (f + 1) * scale).all()


def test_without_onednn_the_matmuls_are_torch_mm(monkeypatch):
    monkeypatch.setattr(workspace, "ONEDNN_MIN_ROWS", 1)  # oneDNN would take all of these...
    monkeypatch.setattr(workspace, "ONEDNN_MIN_FEATURES", 1)
    monkeypatch.setattr(workspace, "_onednn_works", lambda: False)  # ...were it there
    w, b = torch.randn(13, 5), torch.randn(13)
    for h in (torch.randn(700, 5), torch.randn(3, 4, 5), torch.randn(3, 300, 5)):
        with torch.no_grad():
            assert torch.equal(linear_into(Workspace(), "a", h, w, b), F.linear(h, w, b))


def test_onednn_is_used_where_it_applies(monkeypatch):
    """float32 CPU matmuls of at least ONEDNN_MIN_ROWS rows through a layer of at least
    ONEDNN_MIN_FEATURES features in and out, without autograd, go to oneDNN (a chunk of one
    group: its fresh result); smaller ones, narrower ones, float64 and autograd keep
    torch.mm."""
    if not workspace._onednn_works():
        pytest.skip("no oneDNN linear in this build (torch.mm is tested above)")
    calls = []
    real = workspace.onednn_linear
    monkeypatch.setattr(workspace, "onednn_linear", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():  # a layer 128 wide on one side and 5 on the other: torch.mm
        narrow, hn = torch.randn(128, 5), torch.randn(1, 300, 5)
        assert torch.equal(linear_into(Workspace(), "a", hn, narrow, None), F.linear(hn, narrow))
        assert not calls
    monkeypatch.setattr(workspace, "ONEDNN_MIN_FEATURES", 1)
    w, b = torch.randn(13, 5), torch.randn(13)
    h = torch.randn(1, 300, 5)
    with torch.no_grad():
        out = linear_into(Workspace(), "a", h, w, b)
        assert len(calls) == 1 and torch.equal(out, real(h[0], w, b).view(1, 300, 13))
        three = torch.randn(3, 300, 5)  # three groups of 300 rows, each its own call
        out = linear_into(Workspace(), "a", three, w, b)
        assert len(calls) == 4 and torch.equal(out[1], real(three[1], w, b))
        small = torch.randn(3, 4, 5)  # one group of 12 rows
        assert torch.equal(linear_into(Workspace(), "a", small, w, b), F.linear(small, w, b))
        linear_into(Workspace(), "a", h.double(), w.double(), b.double())
        assert len(calls) == 4
    assert workspace._onednn_applies(h, w)
    enabled = torch.backends.mkldnn.enabled
    torch._C._set_mkldnn_enabled(False)  # the user's switch (torch.backends.mkldnn.enabled)
    try:
        assert not workspace._onednn_applies(h, w)
    finally:
        torch._C._set_mkldnn_enabled(enabled)
    # autograd: torch.mm (the operator has no backward), for any trainable part
    assert not workspace._onednn_applies(h, w, b.requires_grad_(True))
    assert not workspace._onednn_applies(h, w.requires_grad_(True))
    assert not workspace._onednn_applies(h.requires_grad_(True), w.detach())


def test_linear_into_equals_linear_and_reuses_its_buffer(monkeypatch):
    monkeypatch.setattr(workspace, "ONEDNN", False)  # torch.mm, into the workspace's buffers
    ws = Workspace()
    w, b = torch.randn(13, 5), torch.randn(13)
    h = torch.randn(3, 4, 5)
    out = linear_into(ws, "a", h, w, b)
    assert out.shape == (3, 4, 13)
    assert torch.equal(out, F.linear(h, w, b))
    ptr = out.data_ptr()
    smaller = linear_into(ws, "a", h[:2], w, None)  # the last, shorter chunk: same buffer
    assert smaller.data_ptr() == ptr
    assert torch.equal(smaller, F.linear(h[:2], w))
    assert linear_into(ws, "a", torch.randn(5, 4, 5), w, b).data_ptr() != ptr  # grows
    assert ws.empty("b", (2,), like=torch.zeros(1, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("outputs", [1, 5, 10, 12, 30])
def test_a_groups_matmul_does_not_depend_on_the_chunk_it_is_in(outputs, dtype, onednn, monkeypatch):
    """MKL's kernels depend on the number of rows (float64) and on the rows' alignment
    (float32, < 12 outputs): aevb's layers without autograd compute ``[S, B, F]`` group by
    group of samples, so that a group's numbers are the same in any chunk of whole groups."""
    from aevb.models.networks import Linear

    monkeypatch.setattr(workspace, "ONEDNN", onednn)
    monkeypatch.setattr(workspace, "ONEDNN_MIN_ROWS", 1)  # every matmul, at these small sizes
    monkeypatch.setattr(workspace, "ONEDNN_MIN_FEATURES", 1)
    torch.manual_seed(outputs)
    layer = Linear(7, outputs).to(dtype)
    g = group_size(45)
    assert g * 45 >= 64
    x = torch.randn(3 * g + 1, 45, 7, dtype=dtype)[1:]  # rows 4 or 8 bytes off alignment
    with torch.no_grad():
        whole = layer(x)
        whole_ws = linear_into(Workspace(), 0, x, layer.weight, layer.bias)
        torch.testing.assert_close(whole, F.linear(x, layer.weight, layer.bias))
        assert torch.equal(whole_ws, whole)
        for k0, k1 in ((0, g), (g, 2 * g), (g, 3 * g), (2 * g, 3 * g)):
            assert torch.equal(layer(x[k0:k1]), whole[k0:k1])
            part = linear_into(Workspace(), 0, x[k0:k1], layer.weight, layer.bias)
            assert torch.equal(part, whole_ws[k0:k1])


@pytest.mark.parametrize("batch, g", [(1, 64), (10, 7), (45, 2), (64, 1), (500, 1)])
def test_group_size(batch, g):
    assert group_size(batch) == g


def test_tanh_module_is_tanh_with_tanhs_gradient():
    from aevb.models.networks import Tanh

    x = torch.linspace(-9, 9, 1001, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(Tanh(), (x[::50].detach().requires_grad_(),))
    y = Tanh()(x)
    assert torch.equal(y, torch.tanh(x))  # under autograd: torch.tanh itself
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, 1 - torch.tanh(x).pow(2), rtol=0, atol=1e-14)
    x32 = x.detach().float()
    assert (Tanh()(x32).double() - torch.tanh(x32.double())).abs().max() < 2e-7
    assert torch.equal(Tanh()(x32), tanh_(x32.clone()))  # without: the evaluator's numbers


def log_sigmoid(u: torch.Tensor) -> torch.Tensor:
    return -softplus(-u)


@pytest.mark.parametrize("d", [1, 7, 784, 3072])
def test_sum_log_sigmoid_equals_the_exact_sum(d):
    g = torch.Generator().manual_seed(d)
    u = torch.randn(4, 3, d, generator=g, dtype=torch.float64) * 3 + 4  # mostly well fitted
    exact = log_sigmoid(u).sum(-1)
    torch.testing.assert_close(sum_log_sigmoid_(u.clone()), exact, rtol=1e-13, atol=1e-12)
    u32 = u.float()
    fast = sum_log_sigmoid_(u32.clone()).double() - log_sigmoid(u32.double()).sum(-1)
    ce = F.logsigmoid(u32).sum(-1).double() - log_sigmoid(u32.double()).sum(-1)
    assert fast.abs().max() < 1.5 * ce.abs().max() + 2e-6


def test_sum_log_sigmoid_takes_the_safe_path_where_a_block_would_underflow():
    u = torch.full((2, 784), 3.0)
    u[1, ::49] = -80.0  # 16 pixels of one block cost 80 nats each: their product underflows
    work = torch.empty(2, 784)
    got = sum_log_sigmoid_(u.clone(), work=work)
    exact = log_sigmoid(u.double()).sum(-1)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), exact, rtol=1e-6, atol=1e-3)
    assert got[1] < -16 * 79  # not lost to the underflow


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
def test_mlp_computes_what_its_layers_compute_with_the_same_gradients(activation):
    # under autograd MLP runs Linear/Tanh/ReLU as functions rather than module calls: its
    # outputs and gradients must be the nn.Sequential's of the same layers, bit for bit
    from torch import nn

    from aevb.models.networks import MLP, mlp

    torch.manual_seed(0)
    net = mlp([12, 9, 7, 5], activation)
    assert isinstance(net, MLP)
    assert list(net.state_dict()) == list(nn.Sequential(*net).state_dict())
    x = torch.randn(6, 12)
    for leaf in (False, True):  # the data itself, or a reparameterised sample, as input
        xs = [x.clone().requires_grad_(leaf) for _ in range(2)]
        outs = [net(xs[0]), nn.Sequential(*net)(xs[1])]
        assert torch.equal(outs[0], outs[1])
        grads = [
            torch.autograd.grad(o.square().sum(), [*net.parameters()] + ([xi] if leaf else []))
            for o, xi in zip(outs, xs, strict=True)
        ]
        for a, b in zip(*grads, strict=True):
            assert torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(net(x), nn.Sequential(*net)(x))


def test_mlp_calls_hooked_layers_as_modules():
    from torch import nn

    from aevb.models.networks import mlp

    net = mlp([4, 3, 2], "tanh")
    seen = []
    handle = net[1].register_forward_hook(lambda m, i, o: seen.append(type(m).__name__))
    net(torch.randn(2, 4, requires_grad=True))
    handle.remove()
    assert seen == ["Tanh"]
    # a hook on every module (as profilers and debuggers register) reaches every layer
    handle = nn.modules.module.register_module_forward_hook(
        lambda m, i, o: seen.append(type(m).__name__)
    )
    try:
        net(torch.randn(2, 4, requires_grad=True))
    finally:
        handle.remove()
    assert seen[1:] == ["Linear", "Tanh", "Linear", "MLP"]
    # a layer compiled on its own (nn.Module.compile) is called as a module: compiled
    compiled = []

    def backend(graph, example_inputs):
        compiled.append(len(example_inputs))
        return graph.forward

    net[2].compile(backend=backend)
    x = torch.randn(2, 4, requires_grad=True)
    out = net(x)
    assert compiled
    assert torch.equal(out, nn.Sequential(*net)(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "activations", [("tanh", "tanh"), ("relu", "tanh"), ("tanh", "relu"), ("tanh",), ("relu",)]
)
def test_folded_layers_compute_the_same_numbers_bit_for_bit(activations, dtype):
    """tanh's scalings (x2 in, 2 s - 1 out) folded into the weights: every matmul and sigmoid
    sees the same numbers doubled or halved exactly, so the features are the unfolded
    path's, bit for bit (odd widths, rows off alignment, several groups)."""
    from torch import nn

    from aevb.models.networks import ACTIVATIONS, Linear, folded_layers, tanh_

    torch.manual_seed(len(activations))
    sizes = [7, 33, 13, 5][: len(activations) + 1]
    layers: list[nn.Module] = []
    for a, b, act in zip(sizes[:-1], sizes[1:], activations, strict=True):
        layers += [Linear(a, b).to(dtype), ACTIVATIONS[act]()]
    x = torch.randn(3 * group_size(45) + 1, 45, 7, dtype=dtype)[1:] * 3
    with torch.no_grad():
        h = x
        for i in range(0, len(layers), 2):  # the unfolded path: linear, then tanh_/relu_
            h = linear_into(Workspace(), i, h, layers[i].weight, layers[i].bias)
            h = tanh_(h) if activations[i // 2] == "tanh" else h.relu_()
        folded = folded_layers(layers)
        assert folded is not None and len(folded) == len(activations)
        ws, f = Workspace(), x
        for i, (w, b, act) in enumerate(folded):
            f = act(linear_into(ws, i, f, w, b))
    assert torch.equal(f, h)
    # the doubled weights are exact copies scaled by powers of two, the parameters untouched
    if activations[0] == "tanh":
        assert torch.equal(folded[0][0], 2 * layers[0].weight)
        assert torch.equal(folded[0][1], 2 * layers[0].bias)
    if activations == ("tanh", "tanh"):
        assert torch.equal(folded[1][0], 4 * layers[2].weight)


def test_folded_layers_leave_other_stacks_alone():
    from torch import nn

    from aevb.models.networks import Linear, Tanh, folded_layers

    assert folded_layers([Linear(3, 2), nn.ELU()]) is None  # no in-place form to fold
    assert folded_layers([Linear(3, 2)]) is None  # not (Linear, activation) pairs
    assert folded_layers([]) is None
    hooked = Tanh()
    hooked.register_forward_hook(lambda m, i, o: None)
    assert folded_layers([Linear(3, 2), hooked]) is None  # a hook must see its calls


def test_decoder_features_fold_on_the_cpu_without_autograd_only():
    from aevb.models.networks import MLPDecoder

    torch.manual_seed(0)
    dec = MLPDecoder((4,), (9, 11), 6, "tanh", (4,))
    hidden = dec.net[:-1]
    z = torch.randn(3, 70, 6)
    ws = Workspace()
    with torch.no_grad():
        fast = dec.features(z, ws)
        assert torch.equal(fast, dec.features(z))  # the module calls: tanh_ layer by layer
        exact = torch.tanh(dec.net[2](torch.tanh(dec.net[0](z))))
        assert (fast - exact).abs().max() < 1e-6
        folded = ws.memo("folded", lambda: None)  # made by the first call, kept
        assert folded is not None and torch.equal(folded[0][0], 2 * dec.net[0].weight)
        # the folded path ran: the first hidden layer's buffer holds half its activation
        first = ws.empty(0, (3, 70, 11), like=z)  # a view of that buffer, as last written
        h1 = torch.tanh(dec.net[0](z))
        assert (first - h1 / 2).abs().max() < 1e-6
    zg = z.clone().requires_grad_()
    assert torch.equal(dec.features(zg, ws), hidden(zg))  # under autograd: torch.tanh

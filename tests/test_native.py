"""aevb's native kernels (``aevb.native``): the C against PyTorch in float64, and the promises
around it: compiled once and cached, used by the evaluator where it loads, and, where it
cannot load, the PyTorch path with the same numbers to float32 rounding.

This machine has a C compiler (the tests say so if not): the kernels are compiled here
into the session's folder (tests/conftest.py).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import make_model

from aevb import native
from aevb.estimators import importance_weighted


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """The native state of a process that has not loaded the kernels yet, with its own
    cache folder; the session's state is put back afterwards."""
    saved = dict(native._state)
    native._state.clear()
    monkeypatch.setenv("AEVB_NATIVE_DIR", str(tmp_path / "native"))
    yield tmp_path / "native"
    native._state.clear()
    native._state.update(saved)


def _lib():
    lib = native.library()
    assert lib is not None, f"the native kernels did not load: {native.status()}"
    return lib


def _reference(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_d log sigmoid((2 x - 1) l) in float64, x broadcast over the samples of rows."""
    sign = (2 * x.double() - 1).repeat(logits.shape[0] // x.shape[0], 1)
    return F.logsigmoid(sign * logits.double()).sum(-1)


def test_a_c_compiler_is_here():
    """The rest of this file tests the kernels themselves: that needs a compiler."""
    assert native.compiler() is not None, "no C compiler: install gcc (Debian: apt install gcc)"
    _lib()


@pytest.mark.parametrize("d", [1, 15, 16, 17, 37, 784])
def test_bernoulli_rows_equal_logsigmoid_sums_in_float64(d):
    _lib()
    g = torch.Generator().manual_seed(d)
    batch, samples = 5, 3
    x = torch.rand(batch, d, generator=g) < 0.3
    # a trained model's logit scale, and the extremes the kernel handles itself
    logits = torch.randn(samples * batch, d, generator=g) * 6 - 3
    logits[0, 0] = 79.0 if not bool(x[0, 0]) else -79.0  # a pixel costing 79 nats
    logits[1, -1] = 60.0 if bool(x[1, -1]) else -60.0  # a pixel that is all but certain
    out = torch.empty(samples * batch)
    assert native.bernoulli_rows(logits, native.sign_bits(x), out) == 0
    want = _reference(logits, x)
    err = (out.double() - want).abs()
    assert float(err.max()) <= 2e-6 * d + 1e-6, float(err.max())  # float32 rounding of the sum
    assert float((err / want.abs().clamp_min(1)).max()) <= 1e-6


def test_rows_beyond_80_nats_or_nan_are_left_to_the_caller():
    _lib()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 40, generator=g) < 0.5
    logits = torch.randn(8, 40, generator=g)
    logits[2, 7] = -85.0 if bool(x[2, 7]) else 85.0  # 85 nats for one pixel
    logits[5, 39] = float("nan")
    out = torch.empty(8)
    assert native.bernoulli_rows(logits, native.sign_bits(x), out) == 2
    assert out.isnan().nonzero().flatten().tolist() == [2, 5]
    keep = torch.tensor([0, 1, 3, 4, 6, 7])
    torch.testing.assert_close(out[keep].double(), _reference(logits, x)[keep], rtol=0, atol=1e-5)


def test_each_row_is_computed_alike_wherever_it_sits():
    """What makes the estimate bit-identical whatever the chunk size: a row's number does
    not depend on the other rows of the call."""
    _lib()
    g = torch.Generator().manual_seed(1)
    b, d = 3, 100
    x = torch.rand(b, d, generator=g) < 0.3
    flip = native.sign_bits(x)
    logits = torch.randn(4 * b, d, generator=g) * 5
    whole = torch.empty(4 * b)
    native.bernoulli_rows(logits, flip, whole)
    for r in range(4 * b):
        one = torch.empty(1)
        native.bernoulli_rows(logits[r : r + 1].clone(), flip[r % b : r % b + 1].clone(), one)
        assert torch.equal(one, whole[r : r + 1])


@pytest.mark.parametrize("n", [1, 15, 16, 17, 1000])
@pytest.mark.parametrize("scale, shift", [(2.0, -1.0), (1.0, -0.5)])
def test_sigmoid_affine_equals_float64(n, scale, shift):
    """tanh(x / 2) and its half, as the evaluator's tanh layers take them, to 2 ulp."""
    _lib()
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g) * 20
    x[0] = {1: 0.0, 15: 100.0, 16: -100.0, 17: float("inf"), 1000: -float("inf")}[n]
    got = native.sigmoid_affine_(x.clone(), scale, shift)
    want = scale * torch.sigmoid(x.double()) + shift
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2.5e-7 * scale)
    nan = native.sigmoid_affine_(torch.full((3,), float("nan")), scale, shift)
    assert bool(nan.isnan().all())


def test_takes_only_what_it_can_compute():
    _lib()
    assert native.takes(torch.zeros(4, 3))
    assert not native.takes(torch.zeros(4, 3, dtype=torch.float64))
    assert not native.takes(torch.zeros(3, 4).t())
    assert not native.takes(torch.zeros(0, 3))
    assert not native.takes(torch.zeros(4)._neg_view())
    assert not native.takes(torch.zeros(4, requires_grad=True))
    assert native.takes(torch.zeros(4, requires_grad=True), autograd=True)
    with torch.no_grad():
        assert native.takes(torch.zeros(4, requires_grad=True))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_transforms_that_would_not_see_the_c_get_pytorchs_operators():
    """Forward-mode AD, vmap, jvp and a JIT trace see PyTorch's operators only: aevb's Tanh
    (the sigmoid form, in C where it may) gives their right answers."""
    import torch.autograd.forward_ad as fwAD

    from aevb.models.networks import Tanh

    _lib()
    act = Tanh()
    x, v = torch.randn(5, 40), torch.randn(5, 40)
    with torch.no_grad(), fwAD.dual_level():
        out = fwAD.unpack_dual(act(fwAD.make_dual(x, v)))
    torch.testing.assert_close(out.tangent, v * (1 - x.tanh() ** 2))
    value, tangent = torch.func.jvp(act, (x,), (v,))
    torch.testing.assert_close(tangent, v * (1 - x.tanh() ** 2))
    torch.testing.assert_close(torch.func.vmap(act)(x), x.tanh(), rtol=0, atol=3e-7)
    with torch.no_grad():
        traced = torch.jit.trace(act, x)
        torch.testing.assert_close(traced(v), v.tanh(), rtol=0, atol=3e-7)


def test_an_empty_batch_has_an_empty_likelihood():
    from aevb.distributions import log_bernoulli

    _lib()
    assert log_bernoulli(torch.zeros(0, 784), torch.zeros(0, 784)).shape == (0,)
    assert log_bernoulli(torch.zeros(0, 784), torch.zeros(5, 0, 784)).shape == (5, 0)


@pytest.mark.parametrize(
    "logits, flip, out",
    [
        (
            torch.zeros(4, 8, dtype=torch.float64),
            torch.zeros(2, 8, dtype=torch.int32),
            torch.zeros(4),
        ),
        (torch.zeros(8, 4).t(), torch.zeros(2, 8, dtype=torch.int32), torch.zeros(4)),
        (torch.zeros(3, 8), torch.zeros(2, 8, dtype=torch.int32), torch.zeros(3)),
        (torch.zeros(4, 8), torch.zeros(2, 9, dtype=torch.int32), torch.zeros(4)),
        (torch.zeros(4, 8), torch.zeros(2, 8, dtype=torch.int64), torch.zeros(4)),
        (torch.zeros(4, 8), torch.zeros(2, 8, dtype=torch.int32), torch.zeros(5)),
    ],
)
def test_the_wrapper_refuses_what_the_c_would_misread(logits, flip, out):
    """Raw pointers go to C: a wrong dtype, layout or shape must never reach it."""
    _lib()
    with pytest.raises(ValueError, match="bernoulli_rows"):
        native.bernoulli_rows(logits, flip, out)


def test_compiled_once_then_loaded_from_the_private_cache(fresh, monkeypatch):
    assert native.library() is not None
    files = list(fresh.glob("kernels-*.so"))
    assert len(files) == 1
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    assert not list(fresh.glob(".build-*"))  # the temporary build folder is gone
    native._state.clear()

    def no_compiler(*a, **k):
        raise AssertionError("compiled again")

    monkeypatch.setattr(subprocess, "Popen", no_compiler)
    assert native.library() is not None
    assert str(files[0]) in native.status()


def test_a_library_cut_short_is_built_again_not_loaded(fresh):
    """Loading a truncated shared library can kill the process (SIGBUS): its SHA-256,
    recorded beside it when built, is checked first."""
    assert native.library() is not None
    (lib,) = fresh.glob("kernels-*.so")
    good = lib.read_bytes()
    cut = lib.with_name("cut")  # a new file in its place: this process has the old one mapped
    cut.write_bytes(good[:1000])
    os.replace(cut, lib)
    native._state.clear()
    assert native.library() is not None
    assert lib.read_bytes() == good
    lib.with_suffix(".sha256").unlink()  # a build that died before its commit
    native._state.clear()
    assert native.library() is not None
    assert lib.with_suffix(".sha256").exists()


def test_a_failed_build_is_not_tried_again_by_every_process(fresh, monkeypatch):
    monkeypatch.setenv("CC", "false")
    assert native.library() is None
    (failed,) = fresh.glob("kernels-*.failed")
    native._state.clear()

    def no_compiler(*a, **k):
        raise AssertionError("compiled again")

    monkeypatch.setattr(subprocess, "Popen", no_compiler)
    assert native.library() is None
    assert f"tried again a day later, or delete {failed}" in native.status()


def test_a_compiler_that_hangs_is_killed_with_what_it_started(fresh, monkeypatch, tmp_path):
    pid_file = tmp_path / "pid"
    cc = tmp_path / "slow-cc"
    cc.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {pid_file}\nwait\n")
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setattr(native, "COMPILE_TIMEOUT_S", 1)
    assert native.library() is None
    assert "took more than 1 s" in native.status()
    assert not list(fresh.glob("kernels-*.failed"))  # a timeout may pass: tried again next time
    pid = int(pid_file.read_text())
    state = Path(f"/proc/{pid}/stat")  # the compiler's own child is gone too (or a zombie)
    assert not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_a_first_load_under_a_float64_default_still_loads(fresh):
    torch.set_default_dtype(torch.float64)
    try:
        assert native.library() is not None, native.status()
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize(
    "cc, why",
    [
        ("/nonexistent/cc", "no C compiler"),
        ("false", "failed"),  # a compiler that fails
    ],
)
def test_without_a_working_compiler_aevb_uses_pytorch(fresh, monkeypatch, cc, why):
    monkeypatch.setenv("CC", cc)
    assert native.library() is None
    assert why in native.status()
    with pytest.raises(RuntimeError, match="native kernels"):
        native.bernoulli_rows(
            torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.int32), torch.zeros(1)
        )


def test_a_folder_others_may_write_to_is_not_loaded_from(fresh):
    fresh.mkdir(parents=True)
    os.chmod(fresh, 0o777)
    assert native.library() is None
    assert "not a folder of this user's only" in native.status()


def test_a_linked_folder_is_not_loaded_from(fresh, tmp_path):
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    fresh.symlink_to(tmp_path / "elsewhere")
    assert native.library() is None
    assert "not a folder of this user's only" in native.status()


def test_switched_off(monkeypatch):
    monkeypatch.setattr(native, "ENABLED", False)
    assert native.library() is None
    assert native.status().startswith("off")


ACTIVATIONS = {"relu": (64,), "tanh": (64, 48)}  # hidden widths


def _realistic(activation: str = "relu") -> tuple[torch.nn.Module, torch.Tensor]:
    """float32 784-pixel model with a trained model's logit scale, binary data drawn from it."""
    torch.manual_seed(0)
    model = make_model(
        torch.float32,
        input_shape=(784,),
        likelihood="bernoulli",
        hidden=ACTIVATIONS[activation],
        activation=activation,
        latent_dim=8,
    ).eval()
    with torch.no_grad():
        z = model.prior().sample(256, generator=torch.Generator().manual_seed(2))
        head = model.decoder.head
        head.weight.mul_(6.0 / (model.decode(z) - head.bias).std())
        head.bias.fill_(-3.0)
        x = model.sample(40, mean=False, generator=torch.Generator().manual_seed(3))
    return model, x


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_the_estimator_uses_the_kernels_and_agrees_with_the_pytorch_path(monkeypatch, activation):
    _lib()
    model, x = _realistic(activation)
    calls: dict[str, int] = {}
    for name in ("bernoulli_rows", "sigmoid_affine_"):
        real = getattr(native, name)

        def spy(*a, name=name, real=real, **k):
            calls[name] = calls.get(name, 0) + 1
            return real(*a, **k)

        monkeypatch.setattr(native, name, spy)
    fast = importance_weighted(model, x, 300, chunk_size=2000, seed=4)["log_px_iw"]
    assert calls.get("bernoulli_rows")  # the kernels computed the likelihoods
    assert bool(calls.get("sigmoid_affine_")) == (activation == "tanh")  # and the tanh layers
    other = importance_weighted(model, x, 300, chunk_size=520, seed=4)["log_px_iw"]
    assert torch.equal(fast, other)  # bit-identical whatever the chunk size, with the kernel
    monkeypatch.setattr(native, "ENABLED", False)
    slow = importance_weighted(model, x, 300, chunk_size=2000, seed=4)["log_px_iw"]
    assert -700 < float(slow.mean()) < -100
    assert float((fast - slow).abs().max()) <= 1e-4  # nats per example


def test_a_pixel_beyond_80_nats_falls_back_to_the_pytorch_path():
    _lib()
    model, x = _realistic()
    with torch.no_grad():
        model.decoder.head.bias[0] = -200.0  # pixel 0 "never on"
        x[:, 0] = 1.0  # but it is: more than 80 nats for it in every sample
    f = model.log_likelihood_fn(x)
    z = torch.randn(2, len(x), model.latent.numel)
    with torch.inference_mode():
        got = f(z)
    want = model.log_likelihood(x, z)
    assert bool(got.isfinite().all())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("d", [16, 17, 784])
@pytest.mark.parametrize("grey", [False, True])
def test_bernoulli_grad_equals_the_cross_entropy_and_its_gradient_in_float64(d, grey):
    _lib()
    g = torch.Generator().manual_seed(d)
    batch, samples = 4, 3
    x = torch.rand(batch, d, generator=g)
    x = x if grey else (x < 0.3).float()
    logits = torch.randn(samples * batch, d, generator=g) * 6
    logits[0, 0] = 90.0  # beyond where the sums-only kernel stops: fine here
    out, grad = torch.empty(samples * batch), torch.empty(samples * batch, d)
    native.bernoulli_grad(logits, x, out, grad)
    xs, ls = x.double().repeat(samples, 1), logits.double()
    want = -F.binary_cross_entropy_with_logits(ls, xs, reduction="none").sum(-1)
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=2e-6 * d)
    torch.testing.assert_close(grad.double(), xs - ls.sigmoid(), rtol=0, atol=2e-7)
    sums_only = torch.empty(samples * batch)
    native.bernoulli_grad(logits, x, sums_only)
    assert torch.equal(sums_only, out)


@pytest.mark.parametrize(
    "logits_shape, x_shape, event_dims",
    [
        ((64, 784), (64, 784), 1),  # a training batch
        ((5, 16, 784), (16, 784), 1),  # IWAE: samples of a batch
        ((8, 1, 28, 28), (8, 1, 28, 28), 3),  # images
    ],
)
def test_log_bernoulli_on_the_kernel_equals_pytorchs_with_gradients(
    monkeypatch, logits_shape, x_shape, event_dims
):
    """The training path (aevb.distributions.log_bernoulli under autograd): values,
    gradients and second derivatives as PyTorch's cross-entropy gives them."""
    from aevb.distributions import log_bernoulli

    _lib()
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(logits_shape, generator=g) * 4).requires_grad_()
    x = (torch.rand(x_shape, generator=g) < 0.3).float()
    v = torch.randn(logits_shape, generator=g)
    calls, real = [], native.bernoulli_grad
    monkeypatch.setattr(native, "bernoulli_grad", lambda *a: calls.append(1) or real(*a))

    def derivatives(on: bool):
        monkeypatch.setattr(native, "ENABLED", on)
        value = log_bernoulli(x, logits, event_dims)
        (grad,) = torch.autograd.grad(value.sum() / 7, logits, create_graph=True)
        (hvp,) = torch.autograd.grad((grad * v).sum(), logits)
        return value, grad, hvp

    # first order, as training takes it: the gradient the C wrote, against float64
    (grad,) = torch.autograd.grad(log_bernoulli(x, logits, event_dims).sum() / 7, logits)
    assert calls
    want = (x.double() - logits.double().sigmoid()) / 7
    torch.testing.assert_close(grad.double(), want.expand(logits_shape), rtol=0, atol=3e-8)
    fast = derivatives(True)
    slow = derivatives(False)
    assert fast[0].shape == slow[0].shape == logits_shape[: len(logits_shape) - event_dims]
    torch.testing.assert_close(fast[0], slow[0], rtol=2e-6, atol=1e-4)
    for a, b in zip(fast[1:], slow[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_training_runs_on_the_kernel_and_learns_as_before(monkeypatch, tmp_path):
    """A short run on the digits (grey levels: the cross-entropy) with and without the
    kernels: the same losses to float32 rounding after 20 steps."""
    import aevb

    _lib()
    calls, real = [], native.bernoulli_grad
    monkeypatch.setattr(native, "bernoulli_grad", lambda *a: calls.append(1) or real(*a))
    tanh_calls, real_tanh = [], native.tanh
    monkeypatch.setattr(native, "tanh", lambda *a: tanh_calls.append(1) or real_tanh(*a))
    config = aevb.RunConfig().replace(
        dataset="digits",
        hidden=(32,),
        activation="tanh",
        latent_dim=2,
        steps=20,
        batch_size=64,
        figures=False,
    )
    fast = aevb.train(config, tmp_path / "fast", progress=False).metrics
    assert calls and tanh_calls
    monkeypatch.setattr(native, "ENABLED", False)
    slow = aevb.train(config, tmp_path / "slow", progress=False).metrics
    for key in ("train_neg_elbo", "valid_neg_elbo"):
        assert fast[key] == pytest.approx(slow[key], rel=1e-4), key


@pytest.mark.parametrize(
    "likelihood, model, used",
    [
        ("bernoulli", "vae", True),
        ("gaussian", "vae", True),  # the normal noise
        ("gaussian", "gumbel", False),  # uniform noise, a Gaussian likelihood: nothing native
    ],
)
def test_an_evaluation_says_whether_the_kernels_computed_it(monkeypatch, likelihood, model, used):
    """The report's "Computed on" line: whether the kernels computed part of this
    evaluation (counted), not merely whether they loaded."""
    import aevb
    from aevb.evaluate import evaluate

    _lib()
    data = aevb.load_dataset(aevb.RunConfig().replace(dataset="digits").data)
    torch.manual_seed(0)
    model = make_model(
        torch.float32,
        model=model,
        input_shape=(1, 8, 8),
        likelihood=likelihood,
        hidden=(16,),
        latent_dim=2,
    ).eval()
    note = evaluate(model, data, "test", k=4)["compute"]
    if used:
        assert "native kernels used (" in note
    else:
        assert note.endswith("native kernels not needed by this model")
    monkeypatch.setattr(native, "ENABLED", False)
    assert evaluate(model, data, "test", k=4)["compute"].endswith(
        "native kernels off (AEVB_NATIVE=0 or aevb.native.ENABLED = False)"
    )


def test_no_gradient_buffer_without_autograd(monkeypatch):
    from aevb.distributions import log_bernoulli

    _lib()
    grads, real = [], native.bernoulli_grad
    monkeypatch.setattr(
        native, "bernoulli_grad", lambda l, x, o, g=None: grads.append(g) or real(l, x, o, g)
    )
    logits = torch.randn(8, 40, requires_grad=True)
    x = (torch.rand(8, 40) < 0.5).float()
    with torch.no_grad():
        log_bernoulli(x, logits)
    log_bernoulli(x, logits).sum().backward()
    assert grads[0] is None and grads[1] is not None


def test_the_cpu_is_part_of_the_cache_key(fresh, monkeypatch):
    assert native.library() is not None
    native._state.clear()
    monkeypatch.setattr(native, "_cpu", lambda: "another CPU")
    assert native.library() is not None
    assert len(list(fresh.glob("kernels-*.so"))) == 2


def test_a_failed_build_is_tried_again_a_day_later(fresh, monkeypatch):
    monkeypatch.setenv("CC", "false")
    assert native.library() is None
    (failed,) = fresh.glob("kernels-*.failed")
    old = failed.stat().st_mtime - native.RETRY_FAILED_BUILD_S - 1
    os.utime(failed, (old, old))
    native._state.clear()
    calls = []
    real = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert native.library() is None
    assert calls  # compiled again


# --- the per-(seed, k) normal noise ---------------------------------------------------------


def _pytorch_normal(n: int, seed: int) -> torch.Tensor:
    return torch.empty(n).normal_(generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n", [16, 17, 31, 32, 40, 50, 624, 625, 1249, 3000])
def test_normal_rows_draw_what_pytorchs_generator_draws(n):
    """Row r is ``normal_`` after ``manual_seed(seed + r)``, for a seed above 2^32 whose low
    32 bits (what PyTorch seeds its Mersenne Twister with) wrap between rows; rows that are
    not a multiple of 16 and rows past the Twister's 624 words of state."""
    _lib()
    seed = (1 << 33) + (1 << 32) - 2
    got = native.normal_rows(torch.empty(3, n), seed)
    for r in range(3):
        # 5e-7 against PyTorch's AVX2/AVX-512 Box-Muller; its plain path takes the angle in
        # float64 (one float32 step of the angle apart, times a radius up to 5.8)
        assert float((got[r] - _pytorch_normal(n, seed + r)).abs().max()) <= 5e-6


@pytest.mark.parametrize("n", [32, 40])
def test_normal_rows_are_the_box_muller_transform_of_pytorchs_uniforms_in_float64(n):
    """The kernel's log, sin and cos against float64 on the same uniforms (PyTorch's
    ``uniform_`` draws the same numbers from the same generator): a block of 16 pairs the
    radius of u_j with the angle of u_(j+8); where n is not a multiple of 16, 16 more
    uniforms for the last 16 numbers."""
    _lib()
    g = torch.Generator().manual_seed(11)
    u = torch.empty(n + (16 if n % 16 else 0)).uniform_(generator=g).double()

    def block(v: torch.Tensor) -> torch.Tensor:
        theta = (v[8:].float() * torch.tensor(2 * torch.pi, dtype=torch.float32)).double()
        radius = (-2 * torch.log1p(-v[:8])).sqrt()
        return torch.cat([radius * theta.cos(), radius * theta.sin()])

    want = torch.cat([block(u[i : i + 16]) for i in range(0, n - n % 16, 16)])
    if n % 16:
        want = torch.cat([want[: n - 16], block(u[n:])])
    got = native.normal_rows(torch.empty(1, n), 11)[0].double()
    assert float((got - want).abs().max()) <= 1e-6


def test_sample_noise_runs_on_the_kernel_and_equals_the_pytorch_path(monkeypatch):
    from aevb.estimators import sample_noise
    from aevb.latents import NoiseSpec

    _lib()
    noise, cpu = NoiseSpec("normal", (5,)), torch.device("cpu")
    before = native.calls()
    fast = sample_noise(noise, 7, 3, 11, 4, cpu)  # 8 samples, rows of 4 x 5 numbers
    assert native.calls() == before + 1  # one call for all 8
    monkeypatch.setattr(native, "ENABLED", False)
    slow = sample_noise(noise, 7, 3, 11, 4, cpu)
    assert fast.shape == slow.shape == (8, 4, 5)
    assert float((fast - slow).abs().max()) <= 5e-6
    for k in (3, 10):  # slice k is what a generator seeded with 7 * 1_000_003 + k draws
        assert torch.allclose(
            fast[k - 3].flatten(), _pytorch_normal(20, 7 * 1_000_003 + k), atol=5e-6
        )


@pytest.mark.parametrize(
    "kind, shape, batch, dtype",
    [
        ("normal", (5,), 3, torch.float32),  # rows of 15: PyTorch draws those another way
        ("normal", (5,), 4, torch.float64),
        ("uniform", (5,), 4, torch.float32),
    ],
)
def test_noise_the_kernel_does_not_draw_is_pytorchs_exactly(monkeypatch, kind, shape, batch, dtype):
    from aevb.estimators import sample_noise
    from aevb.latents import NoiseSpec

    _lib()
    noise, cpu = NoiseSpec(kind, shape), torch.device("cpu")
    before = native.calls()
    here = sample_noise(noise, 7, 0, 6, batch, cpu, dtype)
    assert native.calls() == before
    monkeypatch.setattr(native, "ENABLED", False)
    assert torch.equal(here, sample_noise(noise, 7, 0, 6, batch, cpu, dtype))


def test_a_noise_kernel_off_pytorchs_generator_is_not_used_and_the_rest_is(fresh):
    """The noise kernel mirrors PyTorch's generator, which a release of PyTorch may change:
    its own check, so that a mismatch leaves PyTorch's draws and the other kernels."""
    lib = _lib()

    class Broken:  # a kernel that leaves its output as it was
        def aevb_normal_rows(self, *args):
            pass

    why = native._check_normal(Broken())
    assert why is not None and why.startswith("its normal noise is off PyTorch's")
    assert native._check_normal(lib) is None
    native._state["normal"] = why
    out = torch.empty(2, 32)
    assert native.takes(out) and not native.normal_rows_take(out)


def test_a_failed_noise_check_is_reported_and_leaves_pytorchs_draws(fresh, monkeypatch):
    """Loaded afresh with a noise check that fails (a PyTorch whose generator draws the
    next seed's numbers): the status says so, ``sample_noise`` draws PyTorch's numbers
    exactly, and the other kernels stay in use."""
    from aevb.estimators import sample_noise
    from aevb.latents import NoiseSpec

    real_check = native._check_normal

    class OtherGenerator:
        def __init__(self, lib):
            self.lib = lib

        def aevb_normal_rows(self, out, rows, n, seed):
            self.lib.aevb_normal_rows(out, rows, n, seed + 1)

    monkeypatch.setattr(native, "_check_normal", lambda lib: real_check(OtherGenerator(lib)))
    assert "; not for the normal noise: its normal noise is off PyTorch's" in native.status()
    noise, cpu = NoiseSpec("normal", (5,)), torch.device("cpu")
    before = native.calls()
    drawn = sample_noise(noise, 7, 0, 6, 4, cpu)
    assert native.calls() == before
    monkeypatch.setattr(native, "ENABLED", False)
    assert torch.equal(drawn, sample_noise(noise, 7, 0, 6, 4, cpu))
    monkeypatch.setattr(native, "ENABLED", True)
    assert native.takes(torch.zeros(3, 3))  # the other kernels: in use


# --- tanh under autograd (training) ----------------------------------------------------------


@pytest.mark.parametrize("n", [1, 15, 16, 17, 1000])
@pytest.mark.parametrize("in_place", [False, True])
def test_tanh_equals_float64(n, in_place):
    _lib()
    x = torch.linspace(-30, 30, n) if n > 1 else torch.tensor([0.3])
    want = x.double().tanh()
    y = x if in_place else torch.empty_like(x)
    assert native.tanh(x, y) is y
    assert float((y.double() - want).abs().max()) <= 2.5e-7


@pytest.mark.parametrize("in_place", [False, True])
def test_tanh_under_autograd_is_pytorchs_to_float32_rounding_with_gradients(in_place):
    """Values, gradients and second derivatives (the backward is PyTorch's tanh_backward of
    the output, differentiable again) against ``torch.tanh``."""
    from aevb.models.networks import tanh_autograd

    _lib()
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 40, generator=g) * 3).requires_grad_()
    w = torch.randn(64, 40, generator=g)
    before = native.calls()
    ours = tanh_autograd(x * 1.0, in_place=in_place)  # x * 1.0: an intermediate to own
    assert native.calls() == before + 1
    theirs = torch.tanh(x)
    assert float((ours - theirs).detach().abs().max()) <= 3e-7
    (d_ours,) = torch.autograd.grad((ours * w).sum(), x, create_graph=True)
    (d_theirs,) = torch.autograd.grad((theirs * w).sum(), x, create_graph=True)
    assert float((d_ours - d_theirs).detach().abs().max()) <= 2e-6
    (dd_ours,) = torch.autograd.grad(d_ours.sum(), x)
    (dd_theirs,) = torch.autograd.grad(d_theirs.sum(), x)
    assert float((dd_ours - dd_theirs).abs().max()) <= 2e-5


def test_an_mlp_runs_its_tanh_layers_on_the_kernel_in_place_after_the_matmul(monkeypatch):
    from aevb.models.networks import mlp

    _lib()
    seen, real = [], native.tanh
    monkeypatch.setattr(native, "tanh", lambda x, out: seen.append(x is out) or real(x, out))
    net = mlp([12, 9, 7, 5], "tanh")
    for leaf in (True, False):  # a reparameterised sample, or the data (no gradient)
        x = torch.randn(6, 12, requires_grad=leaf)
        seen.clear()
        out = net(x)
        assert seen == [True, True]  # both layers, in place on F.linear's output
        params = [*net.parameters()] + ([x] if leaf else [])
        grads = torch.autograd.grad(out.square().sum(), params)
        monkeypatch.setattr(native, "ENABLED", False)  # torch.tanh, nothing in place
        out_ref = net(x)
        grads_ref = torch.autograd.grad(out_ref.square().sum(), params)
        monkeypatch.setattr(native, "ENABLED", True)
        assert torch.allclose(out, out_ref, atol=3e-7)
        for a, b in zip(grads, grads_ref, strict=True):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_tanh_that_does_not_follow_a_matmul_leaves_its_input_alone():
    """A tanh layer first (a user's MLP): its input is the caller's, computed out of place."""
    from aevb.models.networks import MLP, Linear, Tanh

    _lib()
    net = MLP(Tanh(), Linear(4, 3))
    leaf = torch.randn(5, 4, requires_grad=True)
    x = leaf * 2.0  # the caller's intermediate: a wrong write would corrupt it silently
    kept = x.detach().clone()
    before = native.calls()
    net(x).sum().backward()
    assert native.calls() == before + 1  # on the kernel, out of place
    assert torch.equal(x.detach(), kept)
    want = 2 * (1 - kept.tanh().square()) * net[1].weight.sum(0)
    assert torch.allclose(leaf.grad, want, atol=2e-6)


def test_tanh_under_autograd_without_the_kernels_is_torch_tanh(monkeypatch):
    from aevb.models.networks import tanh_autograd

    monkeypatch.setattr(native, "ENABLED", False)
    x = torch.randn(8, 8, requires_grad=True)
    assert torch.equal(tanh_autograd(x * 1.0, in_place=True), torch.tanh(x))
    x64 = x.detach().double().requires_grad_()  # float64 is PyTorch's too
    monkeypatch.setattr(native, "ENABLED", True)
    assert torch.equal(tanh_autograd(x64), torch.tanh(x64))


def test_a_dispatch_mode_trace_records_pytorchs_tanh():
    """``make_fx`` (a dispatch-mode tracer) would not see the C: the traced graph must hold
    ``aten.tanh`` and replay the eager numbers."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from aevb.models.networks import mlp

    _lib()
    net = mlp([12, 9, 5], "tanh")

    def grad_of(v):
        return torch.autograd.grad(net(v).sum(), v)[0]

    x = torch.randn(6, 12, requires_grad=True)
    graph = make_fx(grad_of, tracing_mode="real")(x)
    assert "aten.tanh" in str(graph.code)
    assert torch.allclose(graph(x), grad_of(x), atol=1e-6)

"""The fused decoder-likelihood path and the estimator built on it, as properties.

``model.log_likelihood_fn(x)`` fuses an MLP decoder's last layer with the Bernoulli
log-probability of binary x (``-sum_d softplus((1 - 2 x_d) l_d)``, in place): it must
equal the generic ``log_likelihood`` (decode, then the cross-entropy) to float rounding,
with the same gradients; continuous x, other likelihoods and other decoders keep the
generic path exactly. The importance-weighted estimate must agree with the implementation
before the fusion (generic likelihood, chunk-wise logaddexp) to 1e-4 nats per example on
a model with a trained model's logit scale, and be bit-identical whatever the chunk size.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_model

from aevb import workspace
from aevb.estimators import importance_weighted, sample_noise
from aevb.objectives import importance_terms

ARCHS = {
    "relu-mlp": dict(hidden=(40,), latent_dim=5, activation="relu"),
    "tanh-mlp": dict(hidden=(32, 24), latent_dim=6, activation="tanh"),
    "hvae": dict(
        model="hvae", hidden=(32, 24), latent_dims=(16, 8), hidden_top=(32,), activation="tanh"
    ),
}


def _model(name: str, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    base = dict(input_shape=(1, 7, 7), likelihood="bernoulli", **ARCHS[name])
    return make_model(dtype, **{**base, **kw}).eval()


def _data(n: int, binary: bool, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 7, 7, generator=g, dtype=dtype)
    return (x < 0.3).to(dtype) if binary else x


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_fused_equals_generic_log_likelihood_and_gradients(arch):
    model, x = _model(arch), _data(5, binary=True)
    z = torch.randn(3, 5, model.latent.numel, dtype=torch.float64, requires_grad=True)
    generic = model.log_likelihood(x, z)
    fused = model.log_likelihood_fn(x)(z)
    torch.testing.assert_close(fused, generic, rtol=1e-12, atol=1e-10)
    # the same gradients, should a training objective use the fused path
    params = [z, *model.decoder.parameters()]
    g_generic = torch.autograd.grad(generic.sum(), params)
    g_fused = torch.autograd.grad(fused.sum(), params)
    for a, b in zip(g_fused, g_generic, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # without autograd (in place, into reused buffers; on a CPU tanh and softplus through the
    # sigmoid) the same function, to float64 rounding
    with torch.no_grad():
        torch.testing.assert_close(model.log_likelihood_fn(x)(z), fused, rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize(
    "kw, binary",
    [
        (dict(), False),  # continuous x in [0, 1]: the cross-entropy, unchanged
        (dict(likelihood="gaussian"), False),  # no fused form
        (dict(arch="conv", hidden=(4,)), True),  # a conv decoder
    ],
)
def test_other_data_likelihoods_and_decoders_keep_the_generic_path(kw, binary):
    model, x = _model("tanh-mlp", **kw), _data(4, binary)
    z = torch.randn(2, 4, model.latent.numel, dtype=torch.float64)
    assert torch.equal(model.log_likelihood_fn(x)(z), model.log_likelihood(x, z))


def _realistic(arch: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """float32 model with a trained model's logit scale (logits ~ N(-3, 6^2): many confident
    pixels) and binary data drawn from it. 14 x 14 images: with an untrained encoder the
    IW estimate is then ~ -100 nats, as on binarized MNIST, where float32 resolves 8e-6
    nats (at 28 x 28 it would be ~ -300, where float32 steps are 3e-5)."""
    model = _model(arch, torch.float32, input_shape=(1, 14, 14))
    with torch.no_grad():
        z = model.prior().sample(256, generator=torch.Generator().manual_seed(2))
        logits = model.decode(z)
        head = model.decoder.head
        head.weight.mul_(6.0 / (logits - head.bias.view(-1, 14, 14)).std())
        head.bias.fill_(-3.0)
        x = model.sample(64, mean=False, generator=torch.Generator().manual_seed(3))
    return model, x


def _iw_before(model, x: torch.Tensor, k: int, chunk_size: int, seed: int) -> torch.Tensor:
    """log p(x) as aevb computed it before the fusion: the generic likelihood per chunk,
    chunk-wise logsumexp combined by logaddexp (the same noise per (seed, k))."""
    with torch.inference_mode():
        q, p = model.posterior(x), model.prior()
        c = max(1, min(k, chunk_size // len(x)))
        lse = torch.full((len(x),), -math.inf)
        for k0 in range(0, k, c):
            eps = sample_noise(q.noise, seed, k0, min(k, k0 + c), len(x), x.device)
            log_w = importance_terms(model, x, q, p, eps).log_w
            lse = torch.logaddexp(lse, torch.logsumexp(log_w, dim=0))
        return lse - math.log(k)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_log_px_agrees_with_the_implementation_before_the_fusion(arch):
    model, x = _realistic(arch)
    new = importance_weighted(model, x, 200, chunk_size=256, seed=5)["log_px_iw"]
    before = _iw_before(model, x, 200, chunk_size=256, seed=5)
    assert (new - before).abs().max() <= 1e-4, (new - before).abs().max()
    assert -150 < new.mean() < -50  # the magnitude of binarized MNIST's log p(x)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_log_px_with_onednn_agrees_with_torch_mm(arch, monkeypatch):
    """The float32 matmuls on oneDNN (the default on a CPU where it works) against torch.mm
    only: the same estimate to 1e-4 nats per example."""
    model, x = _realistic(arch)
    monkeypatch.setattr(workspace, "ONEDNN", False)
    mm = importance_weighted(model, x, 200, chunk_size=256, seed=5)["log_px_iw"]
    monkeypatch.setattr(workspace, "ONEDNN", True)
    monkeypatch.setattr(workspace, "ONEDNN_MIN_ROWS", 1)  # every matmul, at these small sizes
    monkeypatch.setattr(workspace, "ONEDNN_MIN_FEATURES", 1)
    calls, real = [], workspace.onednn_linear
    monkeypatch.setattr(workspace, "onednn_linear", lambda *a: calls.append(1) or real(*a))
    onednn = importance_weighted(model, x, 200, chunk_size=256, seed=5)["log_px_iw"]
    assert (onednn - mm).abs().max() <= 1e-4, (onednn - mm).abs().max()
    assert bool(calls) == workspace._onednn_works()  # the oneDNN path ran where it exists


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_float32_estimate_is_bit_identical_whatever_the_chunk_size(arch, onednn, monkeypatch):
    monkeypatch.setattr(workspace, "ONEDNN", onednn)
    monkeypatch.setattr(workspace, "ONEDNN_MIN_ROWS", 1)  # every matmul, at these small sizes
    monkeypatch.setattr(workspace, "ONEDNN_MIN_FEATURES", 1)
    model, x = _realistic(arch)
    x = x[:37]
    ref = importance_weighted(model, x, 301, chunk_size=1 << 20)
    for chunk in (1, 37, 100, 37 * 64, 4000):
        r = importance_weighted(model, x, 301, chunk_size=chunk)
        for key in ("log_px_iw", "distortion", "rate", "gap"):
            assert torch.equal(r[key], ref[key]), (chunk, key)


TAILS = {  # widths that are not multiples of the vector loops' 32 floats
    "tanh-mlp": dict(hidden=(30, 20), latent_dim=7, activation="tanh"),
    "hvae": dict(
        model="hvae", hidden=(30, 20), latent_dims=(11, 5), hidden_top=(25,), activation="tanh"
    ),
}


def _model_at(size: int, dtype: torch.dtype, **fields):
    """A model of ``size`` x ``size`` binary images and 45 such images."""
    torch.manual_seed(0)
    base = dict(input_shape=(1, size, size), likelihood="bernoulli")
    model = make_model(dtype, **{**base, **fields}).eval()
    x = torch.nn.functional.interpolate(_data(45, True, dtype), size=(size, size)).round()
    return model, x


def _assert_chunk_size_changes_nothing(model, x, k: int = 70) -> None:
    ref = importance_weighted(model, x, k, chunk_size=1 << 20)
    for chunk in (45, 45 * 3, 45 * 64 + 5):
        r = importance_weighted(model, x, k, chunk_size=chunk)
        for key in ("log_px_iw", "distortion", "rate"):
            assert torch.equal(r[key], ref[key]), (chunk, key)


@pytest.mark.parametrize("workers", [False, True])
@pytest.mark.parametrize("arch", sorted(TAILS))
def test_bit_identical_whatever_the_chunk_size_with_vector_tails_and_threads(
    arch, workers, monkeypatch
):
    """Odd widths leave every chunk's last elements to the scalar forms of the elementwise
    functions, and 28 x 28 images in batches of 45 make each sample's logits (35,280
    numbers) exceed ATen's grain size, so that two threads split the work (without the
    evaluator's workers; with them, each chunk runs on one thread): the estimate must
    still not depend on the chunk size."""
    monkeypatch.setattr(workspace, "WORKERS", workers)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _assert_chunk_size_changes_nothing(*_model_at(28, torch.float32, **TAILS[arch]))
    finally:
        torch.set_num_threads(threads)


VARIANTS = {  # the models and likelihoods beyond the fused Bernoulli MLP path
    "vamp": dict(hidden=(30,), latent_dim=5, activation="tanh", prior="vamp", pseudo_inputs=7),
    "conv": dict(arch="conv", hidden=(4, 8), latent_dim=5, activation="tanh"),
    "gaussian-decoded": dict(hidden=(30,), latent_dim=5, likelihood="gaussian-decoded"),
    "gaussian-pixel": dict(hidden=(30,), latent_dim=5, likelihood="gaussian-pixel"),
    "gumbel": dict(model="gumbel", hidden=(30,), variables=3, categories=5),
    "float64": dict(hidden=(30, 20), latent_dim=5, activation="tanh", dtype=torch.float64),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_is_bit_identical_whatever_the_chunk_size(name):
    kw = dict(VARIANTS[name])
    dtype = kw.pop("dtype", torch.float32)
    _assert_chunk_size_changes_nothing(*_model_at(9, dtype, **kw))

"""The discretized logistic mixture (PixelCNN++, https://arxiv.org/abs/1701.05517):
normalisation, edge bins, an independent loop implementation, gradients, sampling, and the
``dmol`` likelihood's parameter layout and data checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aevb.distributions import (
    log_discretized_logistic_mixture,
    mean_discretized_logistic_mixture,
    sample_discretized_logistic_mixture,
)
from aevb.errors import ConfigError, DataError
from aevb.likelihoods import LIKELIHOODS, DiscretizedLogisticMixture, build_likelihood

DT = torch.float64
ALL_VALUES = torch.arange(256, dtype=DT) / 255  # every 8-bit value, as the data stores it


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_params(
    lead: tuple[int, ...], m: int, c: int, h: int = 1, w: int = 1, seed: int = 0, dtype=DT
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Logits, means (spread past the edges), log-scales in [-6, 1], coefficients (or None)."""
    g = _gen(seed)
    logits = 2.0 * torch.randn(*lead, m, h, w, generator=g, dtype=dtype)
    means = 1.2 * torch.randn(*lead, m, c, h, w, generator=g, dtype=dtype)
    log_scales = -6.0 + 7.0 * torch.rand(*lead, m, c, h, w, generator=g, dtype=dtype)
    k = c * (c - 1) // 2
    coeffs = 2.0 * torch.randn(*lead, m, k, h, w, generator=g, dtype=dtype) if k else None
    return logits, means, log_scales, coeffs


def _first_channels(params, c: int):
    """The parameters of channels ``< c``: the model of those channels alone."""
    logits, means, log_scales, coeffs = params
    k = c * (c - 1) // 2
    return (
        logits,
        means[..., :c, :, :],
        log_scales[..., :c, :, :],
        coeffs[..., :k, :, :] if k else None,
    )


def _pixels(*channels) -> torch.Tensor:
    """``[N, C, 1, 1]`` single-pixel images from C broadcastable ``[N]`` value tensors."""
    channels = [torch.atleast_1d(v) for v in channels]
    return torch.stack(torch.broadcast_tensors(*channels), dim=1)[..., None, None]


# --- normalisation -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_grey_probabilities_sum_to_one(dtype, tol):
    """Sum over all 256 values of one sub-pixel is 1, for 8 random parameter sets."""
    params = _random_params((8, 1), m=5, c=1, seed=1, dtype=dtype)  # [S, 1(B broadcasts), ...]
    log_p = log_discretized_logistic_mixture(_pixels(ALL_VALUES.to(dtype)), *params)  # [S, 256]
    assert log_p.shape == (8, 256)
    torch.testing.assert_close(
        torch.logsumexp(log_p, dim=-1), torch.zeros(8, dtype=dtype), atol=tol, rtol=0
    )


def test_colour_probabilities_sum_to_one_channel_by_channel():
    """With the channel coefficients on, each channel sums to 1 given the channels before it.

    Summing the RGB probability over all blue values must give the RG model (the first two
    channels' parameters alone); summing that over green gives the R model; and red sums to 1.
    """
    rgb = _random_params((1,), m=4, c=3, seed=2)
    rg, r = _first_channels(rgb, 2), _first_channels(rgb, 1)
    some = torch.tensor([0, 1, 77, 128, 254, 255], dtype=DT) / 255
    for red in some:
        for green in some:
            log_p_rgb = log_discretized_logistic_mixture(_pixels(red, green, ALL_VALUES), *rgb)
            log_p_rg = log_discretized_logistic_mixture(_pixels(red, green), *rg)
            torch.testing.assert_close(torch.logsumexp(log_p_rgb, 0), log_p_rg[0])  # blue
        log_p_rg = log_discretized_logistic_mixture(_pixels(red, ALL_VALUES), *rg)
        log_p_r = log_discretized_logistic_mixture(_pixels(red), *r)
        torch.testing.assert_close(torch.logsumexp(log_p_rg, 0), log_p_r[0])  # green
    log_p_r = log_discretized_logistic_mixture(_pixels(ALL_VALUES), *r)
    torch.testing.assert_close(torch.logsumexp(log_p_r, 0), torch.zeros((), dtype=DT))  # red
    # The blue distribution does depend on red and green (the coefficients act).
    p_b = [
        log_discretized_logistic_mixture(_pixels(v, v, ALL_VALUES), *rgb).softmax(0)
        for v in (some[0], some[-1])
    ]
    assert (p_b[0] - p_b[1]).abs().sum() > 0.1


def test_colour_joint_sums_to_one_on_a_coarse_grid():
    """All 16^3 colours of a 4-bit pixel: the whole joint, coefficients included, sums to 1."""
    grid = torch.arange(16, dtype=DT) / 15
    r, g, b = torch.meshgrid(grid, grid, grid, indexing="ij")
    x = _pixels(r.flatten(), g.flatten(), b.flatten())
    params = _random_params((1,), m=3, c=3, seed=3)
    log_p = log_discretized_logistic_mixture(x, *params, num_bins=16)
    torch.testing.assert_close(torch.logsumexp(log_p, 0), torch.zeros((), dtype=DT))


# --- edge bins and tiny scales -------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 1, 100, 254, 255])
def test_a_narrow_logistic_puts_its_mass_on_its_bin(k):
    centre = 2 * k / 255 - 1
    x = torch.tensor([k / 255], dtype=DT).reshape(1, 1, 1, 1)
    logits = torch.zeros(1, 1, 1, dtype=DT)

    def prob(mean: float, log_scale: float, floor: float) -> float:
        means = torch.full((1, 1, 1, 1), mean, dtype=DT)
        log_scales = torch.full((1, 1, 1, 1), log_scale, dtype=DT)
        log_p = log_discretized_logistic_mixture(x, logits, means, log_scales, min_log_scale=floor)
        return math.exp(float(log_p))

    assert prob(centre, -12.0, floor=-20.0) > 1 - 1e-9  # all the mass, edge bins included
    # At PixelCNN++'s floor (log s >= -7) an interior bin holds tanh(h / 2s), h = 1/255 ...
    cap = math.tanh(math.exp(7.0) / 255 / 2)
    assert prob(centre, -30.0, floor=-7.0) == pytest.approx(cap if 0 < k < 255 else 1, abs=0.02)
    # ... while an edge bin takes the whole tail beyond it, so a mean past the edge fills it.
    if k in (0, 255):
        assert prob(3.0 * centre, -30.0, floor=-7.0) > 1 - 1e-12


# --- an independent implementation ---------------------------------------------------------
def _loop_log_prob(x, logits, means, log_scales, coeffs, min_log_scale=-7.0) -> np.ndarray:
    """Per example, pixel, component and channel, straight from the paper's definition."""

    def cdf(t: float) -> float:
        return 1.0 / (1.0 + math.exp(-t))

    x, logits, means, log_scales = (
        np.asarray(t, dtype=np.float64) for t in (x, logits, means, log_scales)
    )
    coeffs = None if coeffs is None else np.tanh(np.asarray(coeffs, dtype=np.float64))
    n_samples, batch, m, c, h, w = means.shape
    out = np.zeros((n_samples, batch))
    for s in range(n_samples):
        for b in range(batch):
            for i in range(h):
                for j in range(w):
                    values = [int(round(x[b, ch, i, j] * 255)) for ch in range(c)]
                    scaled = [v / 127.5 - 1 for v in values]
                    weights = np.exp(logits[s, b, :, i, j]) / np.exp(logits[s, b, :, i, j]).sum()
                    mixture = 0.0
                    for comp in range(m):
                        mu = [means[s, b, comp, ch, i, j] for ch in range(c)]
                        if c == 3:
                            a = coeffs[s, b, comp, :, i, j]
                            mu[1] += a[0] * scaled[0]
                            mu[2] += a[1] * scaled[0] + a[2] * scaled[1]
                        prob = 1.0
                        for ch in range(c):
                            scale = math.exp(max(log_scales[s, b, comp, ch, i, j], min_log_scale))
                            up = cdf((scaled[ch] + 1 / 255 - mu[ch]) / scale)
                            low = cdf((scaled[ch] - 1 / 255 - mu[ch]) / scale)
                            if values[ch] == 0:
                                prob *= up
                            elif values[ch] == 255:
                                prob *= 1 - low
                            else:
                                prob *= up - low
                        mixture += weights[comp] * prob
                    out[s, b] += math.log(mixture)
    return out


@pytest.mark.parametrize("c", [1, 3])
def test_agrees_with_a_direct_loop(c):
    n_samples, batch, m, h, w = 2, 3, 3, 2, 3
    g = _gen(4)
    values = torch.randint(0, 256, (batch, c, h, w), generator=g)
    values[0, :, 0, 0], values[1, :, 1, 2] = 0, 255  # edge bins in every channel
    x = values.to(DT) / 255
    logits = torch.randn(n_samples, batch, m, h, w, generator=g, dtype=DT)
    means = 0.7 * torch.randn(n_samples, batch, m, c, h, w, generator=g, dtype=DT)
    # Scales from e^-3 (a few bins) to e^0.5; one below the floor, which must clamp it.
    log_scales = -3.0 + 3.5 * torch.rand(n_samples, batch, m, c, h, w, generator=g, dtype=DT)
    log_scales[0, 0, 0, 0, 0, 0] = -9.0
    means[0, 0, 0, 0, 0, 0] = -1.0  # ... on the edge bin it scores, so the mass stays sizeable
    k = c * (c - 1) // 2
    coeffs = torch.randn(n_samples, batch, m, k, h, w, generator=g, dtype=DT) if k else None
    ref = torch.from_numpy(_loop_log_prob(x, logits, means, log_scales, coeffs))
    got = log_discretized_logistic_mixture(x, logits, means, log_scales, coeffs)
    assert got.shape == (n_samples, batch)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    as_float32 = [None if t is None else t.float() for t in (x, logits, means, log_scales, coeffs)]
    got32 = log_discretized_logistic_mixture(*as_float32)
    torch.testing.assert_close(got32.double(), ref, rtol=1e-5, atol=1e-3)


# --- gradients ------------------------------------------------------------------------------
@pytest.mark.parametrize("log_scale", [-60.0, -7.0, 0.0, 20.0, 85.0, 200.0])
@pytest.mark.parametrize("mean", [-1e3, -1.0, 0.3, 1.0, 1e3])
def test_gradients_are_finite_for_extreme_parameters(log_scale, mean):
    """float32, as in training: far-off means, vanishing and huge scales, saturated logits."""
    g = _gen(5)
    x = torch.randint(0, 256, (2, 3, 2, 2), generator=g) / 255
    x[0, :, 0, 0], x[1, :, 0, 0] = 0.0, 1.0
    m = 3
    logits = torch.tensor([100.0, -100.0, 0.0]).reshape(1, 1, m, 1, 1).expand(2, 2, m, 2, 2)
    means = torch.full((2, 2, m, 3, 2, 2), mean)
    log_scales = torch.full((2, 2, m, 3, 2, 2), log_scale)
    coeffs = 50.0 * torch.randn(2, 2, m, 3, 2, 2, generator=g)
    leaves = [t.clone().requires_grad_(True) for t in (logits, means, log_scales, coeffs)]
    log_p = log_discretized_logistic_mixture(x, *leaves)
    assert log_p.shape == (2, 2) and torch.isfinite(log_p).all(), log_p
    assert (log_p <= 0).all()  # a probability
    log_p.sum().backward()
    for leaf in leaves:
        assert torch.isfinite(leaf.grad).all()


# --- sampling -------------------------------------------------------------------------------
def _chi_square_ok(counts: torch.Tensor, probs: torch.Tensor) -> tuple[bool, float, int]:
    """Pearson's statistic over cells with >= 5 expected (the rest pooled) vs a 5-sigma bound."""
    n = counts.sum()
    expected = probs * n
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum().reshape(1)])
    exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    keep = exp > 0
    stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    dof = int(keep.sum()) - 1
    return stat < dof + 5 * math.sqrt(2 * dof), stat, dof


def test_grey_samples_follow_the_probabilities():
    m = 3
    logits = torch.tensor([0.0, -1.0, 0.5], dtype=DT).reshape(m, 1, 1)
    means = torch.tensor([-0.98, 0.2, 0.9], dtype=DT).reshape(m, 1, 1, 1)  # one at the 0 edge
    log_scales = torch.tensor([-4.0, -3.0, -2.0], dtype=DT).reshape(m, 1, 1, 1)
    n = 200_000
    params = [t.expand(n, *t.shape) for t in (logits, means, log_scales)]
    x = sample_discretized_logistic_mixture(*params, generator=_gen(6))
    assert x.shape == (n, 1, 1, 1) and x.dtype == DT
    values = x.flatten() * 255
    assert torch.equal(values, values.round()) and values.min() >= 0 and values.max() <= 255
    counts = torch.bincount(values.round().long(), minlength=256).to(DT)
    assert counts[0] > 1000  # the edge bin collects the first component's left tail
    probs = log_discretized_logistic_mixture(_pixels(ALL_VALUES), logits, means, log_scales).exp()
    ok, stat, dof = _chi_square_ok(counts, probs)
    assert ok, (stat, dof)


def test_colour_samples_follow_the_joint_probabilities():
    """On an 8-level grid, the 512 colours' frequencies match the joint (coefficients on)."""
    levels = 8
    params = _random_params((), m=2, c=3, seed=7)
    n = 200_000
    x = sample_discretized_logistic_mixture(
        *[t.expand(n, *t.shape) for t in params], num_bins=levels, generator=_gen(8)
    )
    k = (x[:, :, 0, 0] * (levels - 1)).round().long()  # [n, 3]
    counts = torch.bincount(k[:, 0] * levels**2 + k[:, 1] * levels + k[:, 2], minlength=levels**3)
    grid = torch.arange(levels, dtype=DT) / (levels - 1)
    r, g, b = torch.meshgrid(grid, grid, grid, indexing="ij")
    all_colours = _pixels(r.flatten(), g.flatten(), b.flatten())
    probs = log_discretized_logistic_mixture(all_colours, *params, num_bins=levels).exp()
    ok, stat, dof = _chi_square_ok(counts.to(DT), probs)
    assert ok, (stat, dof)


# --- the mean -------------------------------------------------------------------------------
def test_mean_is_within_half_a_bin_of_the_discrete_mean():
    """For C = 1 the mean equals sum_v v/255 P(v) up to the rounding to bins (<= 1/510)."""
    params = _random_params((16,), m=4, c=1, seed=9)
    params[1][:4] = torch.tensor([-1.0, 1.0, -1.3, 1.3], dtype=DT).reshape(4, 1, 1, 1, 1)
    params[2][:4] = 0.0  # broad components at and past the edges: clip(mean) would be far off
    probs = log_discretized_logistic_mixture(_pixels(ALL_VALUES)[:, None], *params).exp()
    exact = (probs * ALL_VALUES[:, None]).sum(0)  # [16]
    got = mean_discretized_logistic_mixture(*params)
    assert got.shape == (16, 1, 1, 1)
    assert (got.flatten() - exact).abs().max() <= 1 / 510 + 1e-9


# --- the likelihood -------------------------------------------------------------------------
def _blocks(lead, m, c, h, w, seed=10):
    g = _gen(seed)
    k = c * (c - 1) // 2
    return (
        torch.randn(*lead, m, h, w, generator=g),
        torch.randn(*lead, m, c, h, w, generator=g),
        torch.randn(*lead, m, c, h, w, generator=g) - 2,
        torch.randn(*lead, m, k, h, w, generator=g),
    )


@pytest.mark.parametrize("c, per_mixture", [(1, 3), (3, 10)])
def test_dmol_parameter_layout(c, per_mixture):
    m, h, w = 4, 3, 5
    lik = build_likelihood("dmol", (c, h, w), 0.1, 1e-3)
    assert isinstance(lik, DiscretizedLogisticMixture) and lik.mixtures == 10
    assert lik.param_shape == (10 * per_mixture, h, w)
    lik = DiscretizedLogisticMixture((c, h, w), mixtures=m)
    assert lik.param_shape == (m * per_mixture, h, w)
    logits, means, log_scales, coeffs = _blocks((2, 3), m, c, h, w)
    # The documented layout along P: logits | means (m-major) | log-scales | coefficients.
    params = torch.cat(
        [logits, means.flatten(-4, -3), log_scales.flatten(-4, -3), coeffs.flatten(-4, -3)], dim=-3
    )
    assert params.shape == (2, 3, *lik.param_shape)
    assert params[0, 0, m + 1 * c + (c - 1), 2, 4] == means[0, 0, 1, c - 1, 2, 4]
    got = lik.split_params(params)
    for a, b in zip(got[:3], (logits, means, log_scales), strict=True):
        assert torch.equal(a, b)
    assert got[3] is None if c == 1 else torch.equal(got[3], coeffs)
    x = torch.randint(0, 256, (3, c, h, w), generator=_gen(11)) / 255
    expected = log_discretized_logistic_mixture(x, *got)
    assert torch.equal(lik.log_prob(x, params), expected) and expected.shape == (2, 3)
    mean = lik.mean(params)
    assert mean.shape == (2, 3, c, h, w) and mean.min() >= 0 and mean.max() <= 1
    sample = lik.sample(params, generator=_gen(12))
    assert sample.shape == (2, 3, c, h, w)
    assert torch.equal(sample * 255, (sample * 255).round())
    with pytest.raises(ValueError, match="must end in"):
        lik.log_prob(x, params[..., 1:, :, :])


def test_the_other_likelihoods_keep_their_parameter_shape_and_say_if_discrete():
    event = (1, 3, 4)
    for name in sorted(LIKELIHOODS):
        lik = build_likelihood(name, event, 0.1, 1e-3)
        if name != "dmol":
            assert lik.param_shape == (lik.n_params, *event)
        assert lik.discrete == (name in ("bernoulli", "dmol")), name


def test_dmol_settings_are_checked():
    with pytest.raises(ConfigError, match=r"\[C, H, W\]"):
        build_likelihood("dmol", (64,), 0.1, 1e-3)
    with pytest.raises(ConfigError, match="mixtures"):
        DiscretizedLogisticMixture((3, 4, 4), mixtures=0)
    lik = DiscretizedLogisticMixture((3, 4, 4), mixtures=2)
    with pytest.raises(ConfigError, match="param_shape|per-pixel"):
        _ = lik.n_params  # the per-element decoders cannot serve it: say so, do not mis-size


def test_dmol_accepts_8_bit_data_and_refuses_the_rest():
    lik = DiscretizedLogisticMixture((3, 4, 4), mixtures=2)
    raw = torch.randint(0, 256, (5, 3, 4, 4), generator=_gen(13), dtype=torch.uint8)
    raw[0, 0, 0, 0], raw[0, 0, 0, 1] = 0, 255
    lik.check_data(raw.float() / 255)
    lik.check_data(raw.double() / 255)
    off_grid = raw.float() / 255
    off_grid[1, 2, 3, 3] += 0.4 / 255  # e.g. dequantisation noise
    with pytest.raises(DataError, match=r"v/255 .* off that grid; .*--likelihood gaussian") as err:
        lik.check_data(off_grid)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        lik.check_data(raw.float())  # 0..255, not divided
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        lik.check_data(raw.float() / 127.5 - 1)  # normalised to [-1, 1]
    with pytest.raises(DataError, match="NaN"):
        lik.check_data(torch.full((1, 3, 4, 4), float("nan")))

"""Encoder and decoder networks: small modules that map shapes to shapes.

* encoders map ``[B, *event]`` (and an optional context vector ``[B, cond_dim]``, for
  conditional models) to ``[B, out_dim]`` (e.g. mu and logvar side by side);
* decoders map ``[N, latent_dim]`` to ``[N, *out_shape]`` (the likelihood's ``param_shape``;
  for convolutions its last two sizes are the image's H and W). A conditional model
  concatenates its context to z, so its decoder's ``latent_dim`` counts both.

``mlp`` flattens the input; ``conv`` needs images ``(C, H, W)`` and halves the resolution
with each stride-2 convolution (kernel 4, padding 1), mirrored by transposed convolutions
that restore the exact encoder sizes (odd sizes included). ``resnet`` is ``conv`` with two
pre-activation residual blocks (He et al. 2016, https://arxiv.org/abs/1603.05027) after
every downsampling and before every upsampling: deeper at the same full-resolution cost,
for 32x32 colour images under the ``dmol`` likelihood.
A new architecture registers its two classes in :data:`ENCODERS` and :data:`DECODERS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _modules

from .. import native
from ..errors import ConfigError
from ..workspace import (
    Workspace,
    aligned_rows,
    each_group_,
    groups,
    linear_into,
    linear_per_group,
    per_group,
)

if TYPE_CHECKING:
    from ..likelihoods import Likelihood


def tanh_(x: Tensor) -> Tensor:
    """``tanh`` in place, as ``2 sigmoid(2x) - 1`` on a CPU: ``[...]`` -> the same tensor.

    On a CPU, PyTorch's tanh is a 1-ulp transcendental ~4x slower than its sigmoid (a fast
    vectorised exp); through the sigmoid, tanh is within 2e-7 of the exact value (the
    1-ulp tanh: 3e-8). The sigmoid runs group by group on ``[S, B, ...]`` samples, so that
    a sample's numbers do not depend on S (see :mod:`aevb.workspace`; the scalings are
    exact). Elsewhere ``torch.tanh_``.
    """
    if x.device.type != "cpu":
        return x.tanh_()
    return _tanh_of_half_(x.mul_(2.0))


def _tanh_of_half_(x: Tensor) -> Tensor:
    """``tanh(x / 2) = 2 sigmoid(x) - 1`` in place (CPU): one pass of aevb's native kernel
    where it takes x (:func:`aevb.native.sigmoid_affine_`), else the sigmoid group by group."""
    if native.takes(x):
        return native.sigmoid_affine_(x, 2.0, -1.0)
    each_group_(torch.sigmoid_, x)
    return x.mul_(2.0).sub_(1.0)


def _half_tanh_of_half_(x: Tensor) -> Tensor:
    """``tanh(x / 2) / 2 = sigmoid(x) - 1/2`` in place (CPU), as :func:`_tanh_of_half_`."""
    if native.takes(x):
        return native.sigmoid_affine_(x, 1.0, -0.5)
    each_group_(torch.sigmoid_, x)
    return x.sub_(0.5)


class Tanh(nn.Tanh):
    """``nn.Tanh``; on a CPU computed through one exponential: without autograd through the
    sigmoid (:func:`tanh_`), as the evaluator computes it; under autograd by
    :func:`tanh_autograd` (aevb's native kernel where it takes x, else ``torch.tanh``)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu":
            return torch.tanh(x)
        if torch.is_grad_enabled() and x.requires_grad:
            return tanh_autograd(x)
        return tanh_(x.clone())


class _NativeTanh(torch.autograd.Function):
    """tanh on aevb's native kernel (``2 / (1 + e^(-2x)) - 1`` in one pass,
    :func:`aevb.native.tanh`), in place when the caller owns x; the backward is PyTorch's
    ``tanh_backward`` of the output (differentiable again)."""

    @staticmethod
    def forward(ctx, x: Tensor, in_place: bool) -> Tensor:  # type: ignore[override]
        y = x if in_place else torch.empty_like(x)
        native.tanh(x, y)
        if in_place:
            ctx.mark_dirty(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y), None


def tanh_autograd(x: Tensor, in_place: bool = False) -> Tensor:
    """``tanh(x)`` under autograd: ``[...]`` -> ``[...]``. On a float32 CPU tensor that aevb's
    native kernels take, one pass of C (within 2e-7 of tanh) and PyTorch's backward of
    tanh; ``in_place`` when x is the caller's own intermediate (a matmul's fresh output
    that no backward needs). Elsewhere ``torch.tanh``.

    PyTorch's CPU tanh is a 1-ulp transcendental ~6x slower than one exponential: 66 us on
    a ``[128, 200]`` layer on this project's CPU, 4.5% of the tanh model's training step
    for its four layers. In place after the matmul the kernel took the step 1.01-1.03x
    faster (paired, docs/benchmarks.md "Training step"); through PyTorch's operators
    (``2 sigmoid(2x) - 1``: a copy, two scalings, their backward nodes) it was slower.
    """
    if native.takes(x, autograd=True):
        return _NativeTanh.apply(x, in_place)
    return torch.tanh(x)


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
}


# Activations with an in-place form (used without autograd): the same function, computed
# for speed in the evaluator's hot loop.
IN_PLACE: dict[type[nn.Module], Callable[[Tensor], Tensor]] = {
    nn.ReLU: torch.relu_,
    nn.Tanh: tanh_,
    Tanh: tanh_,
}


class Linear(nn.Linear):
    """``nn.Linear``; without autograd, ``[S, B, F]`` samples one matmul per group of samples.

    So that a sample's numbers do not depend on how many samples a chunk holds (see
    :mod:`aevb.workspace`). The parameters and the state dict are ``nn.Linear``'s.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or (
            torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        ):
            return super().forward(x)
        return linear_per_group(x, self.weight, self.bias)


class MLP(nn.Sequential):
    """``nn.Sequential`` of :class:`Linear` and activation layers (what :func:`mlp` builds).

    Under autograd, a layer whose input requires gradients and that has no hooks runs as
    its function (``F.linear``, :func:`tanh_autograd`, ``torch.relu``: what its ``forward``
    does then) rather than through ``nn.Module.__call__`` and its ``forward``: four Python
    frames fewer a layer, which on this project's CPU is ~1% of a small model's training
    step (docs/benchmarks.md, "Training step"); a tanh right after a linear layer is
    computed in place on the linear's output, the same numbers. Otherwise (an in-place ReLU, a subclass,
    a layer compiled on its own with ``layer.compile()``, hooks registered globally, under
    ``torch.jit.trace``) each layer is called as a module. Modules, parameters and state
    dict are the ``nn.Sequential``'s. (A profiler's module labels then show the MLP, not
    its layers.)
    """

    def forward(self, x: Tensor) -> Tensor:
        if _global_hooks() or torch.jit.is_tracing():
            return super().forward(x)
        grad = torch.is_grad_enabled()
        fresh = False  # x is the output of F.linear just above: this loop's own tensor
        for layer in self._modules.values():
            kind = type(layer)
            direct = (
                grad
                and kind in _AS_FUNCTION
                and not _hooked(layer)
                and not getattr(layer, "inplace", False)
            )
            if direct and kind is Linear and (x.requires_grad or layer.weight.requires_grad):
                # (the data into the first layer: its output requires gradients all the same)
                x, fresh = F.linear(x, layer.weight, layer.bias), True
            elif not (direct and x.requires_grad):
                x, fresh = layer(x), False
            elif kind is Tanh:  # in place on a matmul's output (its backward does not need it)
                x, fresh = tanh_autograd(x, in_place=fresh and x._base is None), False
            else:
                x, fresh = _AS_FUNCTION[kind](x), False
        return x


# What a layer's forward computes on an input that requires gradients (on any device).
_AS_FUNCTION: dict[type[nn.Module], Callable[[Tensor], Tensor] | None] = {
    Linear: None,  # F.linear with the layer's parameters
    Tanh: tanh_autograd,
    nn.Tanh: torch.tanh,
    nn.ReLU: torch.relu,
}


def _hooked(m: nn.Module) -> bool:
    """Whether calling ``m`` does more than its ``forward``: hooks, or its own compile."""
    return bool(
        m._forward_hooks
        or m._forward_pre_hooks
        or m._backward_hooks
        or m._backward_pre_hooks
        or getattr(m, "_compiled_call_impl", None) is not None
    )


def _global_hooks() -> bool:
    """Whether hooks are registered for every module (``register_module_forward_hook``, ...)."""
    return bool(
        _modules._global_forward_hooks
        or _modules._global_forward_pre_hooks
        or _modules._global_backward_hooks
        or _modules._global_backward_pre_hooks
    )


def mlp(sizes: list[int], activation: str) -> MLP:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]`` with the activation between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return MLP(*layers)


def _with_context(h: Tensor, cond: Tensor | None) -> Tensor:
    """Features ``[N, F]`` with the context ``[..., K]`` (flattened to ``[N, K]``) appended."""
    return h if cond is None else torch.cat([h, cond.reshape(h.shape[0], -1)], dim=-1)


class MLPEncoder(nn.Module):
    def __init__(
        self,
        event_shape: tuple[int, ...],
        hidden: tuple[int, ...],
        out_dim: int,
        activation: str,
        cond_dim: int = 0,
    ):
        super().__init__()
        self.net = mlp([math.prod(event_shape) + cond_dim, *hidden, out_dim], activation)
        self.event_dims = len(event_shape)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        h = x.flatten(start_dim=x.dim() - self.event_dims)
        if cond is not None:
            h = torch.cat([h, cond], dim=-1)
        return self.net(h)


class MLPDecoder(nn.Module):
    def __init__(
        self,
        event_shape: tuple[int, ...],
        hidden: tuple[int, ...],
        latent_dim: int,
        activation: str,
        out_shape: tuple[int, ...],
    ):
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.net = mlp([latent_dim, *reversed(hidden), math.prod(self.out_shape)], activation)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() > 2 and (
            torch.is_grad_enabled() and (z.requires_grad or self.head.weight.requires_grad)
        ):
            # Under autograd, samples [S, B, d] as rows [S * B, d]: two views, not two a layer
            # (without autograd each Linear runs group by group: see aevb.workspace)
            out = self.net(z.reshape(-1, z.shape[-1]))
            return out.view(*z.shape[:-1], *self.out_shape)
        return self.net(z).unflatten(-1, self.out_shape)

    @property
    def head(self) -> nn.Linear:
        """The last layer: features ``[..., F]`` -> the flattened params."""
        return self.net[-1]

    def features(self, z: Tensor, workspace: Workspace | None = None) -> Tensor:
        """Every layer but the last: ``[..., latent_dim]`` -> ``[..., F]``.

        Without autograd the activations run in place, and with a ``workspace`` the linear
        layers write into its buffers (no fresh tensor per layer, which on a CPU costs page
        faults in the evaluator's hot loop); the result is then a workspace buffer, valid
        until the next call.
        """
        h = z
        in_place = not (
            torch.is_grad_enabled() and (z.requires_grad or self.head.weight.requires_grad)
        )
        if in_place and workspace is not None and z.device.type == "cpu":
            # tanh's scalings folded into the weights (once per workspace): the same numbers
            folded = workspace.memo("folded", lambda: folded_layers(list(self.net)[:-1]))
            if folded is not None:
                for i, (weight, bias, activation_) in enumerate(folded):
                    h = activation_(linear_into(workspace, i, h, weight, bias))
                return h
        for i, layer in enumerate(self.net[:-1]):
            if in_place and workspace is not None and isinstance(layer, nn.Linear):
                h = linear_into(workspace, i, h, layer.weight, layer.bias)
            elif in_place and type(layer) in IN_PLACE:
                h = IN_PLACE[type(layer)](h)
            else:
                h = layer(h)
        return h


# Activations computed as ``act(x) = out_scale * f(in_scale * x)`` with ``f`` in place: the
# scalings (powers of two) fold exactly into the weights around them. On a CPU tanh is
# 2 sigmoid(2x) - 1 (:func:`tanh_`): its input doubling goes into its layer's weights and
# bias, and its output as ``2 (sigmoid - 1/2)`` into the next layer's weights.
_FOLDABLE: dict[type[nn.Module], tuple[float, Callable[[Tensor], Tensor], float]] = {
    nn.ReLU: (1.0, torch.relu_, 1.0),
    nn.Tanh: (2.0, _half_tanh_of_half_, 2.0),
    Tanh: (2.0, _half_tanh_of_half_, 2.0),
}

FoldedLayer = tuple[Tensor, "Tensor | None", Callable[[Tensor], Tensor]]


def folded_layers(layers: list[nn.Module]) -> list[FoldedLayer] | None:
    """``Linear, activation, ...`` pairs as ``(weight, bias, activation_)`` with each
    activation's scalings folded into the weights: the same numbers, bit for bit, with
    fewer passes (CPU, without autograd; None when a layer is not a Linear followed by a
    ReLU or tanh).

    ``tanh(W h + b)`` is computed by :func:`tanh_` as ``2 sigmoid(2 (W h + b)) - 1``, three
    passes beside the sigmoid; folded, it is ``sigmoid((2W) h + 2b) - 1/2`` (half the
    activation) with the next layer's weights doubled, one pass. Scaling by 2 is exact in
    floating point and commutes with rounding, so every matmul and sigmoid sees the same
    numbers, doubled or halved exactly. The last layer returns the activation itself
    (``tanh(x / 2)`` from the doubled pre-activation), so what follows is unchanged.
    On the tanh decoder of Burda et al. this is ~1.5% of an importance-sampled evaluation
    (docs/benchmarks.md, "Importance-sampled evaluation").
    """
    if len(layers) % 2 or not layers:
        return None
    out: list[FoldedLayer] = []
    scale = 1.0  # the true input is `scale` times the computed one
    for i in range(0, len(layers), 2):
        lin, act = layers[i], layers[i + 1]
        fold = _FOLDABLE.get(type(act))
        if type(lin) not in (Linear, nn.Linear) or fold is None or _hooked(lin) or _hooked(act):
            return None
        in_scale, fn, out_scale = fold
        if i == len(layers) - 2 and out_scale != 1.0:
            fn, out_scale = _tanh_of_half_, 1.0  # the last layer's output is the true one
        w, b = lin.weight, lin.bias
        out.append(
            (
                w if scale * in_scale == 1.0 else w * (scale * in_scale),
                b if b is None or in_scale == 1.0 else b * in_scale,
                fn,
            )
        )
        scale = out_scale
    return out


def conv_sizes(event_shape: tuple[int, ...], n_layers: int) -> list[tuple[int, int]]:
    """Spatial sizes at each level of the conv encoder: ``[(H, W), (H//2, W//2), ...]``."""
    if len(event_shape) != 3:
        raise ConfigError(
            f"--arch conv needs image data (C, H, W) but examples have shape {event_shape}; use --arch mlp"
        )
    h, w = event_shape[1], event_shape[2]
    sizes = [(h, w)]
    for _ in range(n_layers):
        h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ConfigError(
                f"{n_layers} stride-2 convolutions are too many for {event_shape[1]}x{event_shape[2]} "
                "images; give fewer --hidden channels"
            )
        sizes.append((h, w))
    return sizes


class ConvEncoder(nn.Module):
    def __init__(
        self,
        event_shape: tuple[int, ...],
        hidden: tuple[int, ...],
        out_dim: int,
        activation: str,
        cond_dim: int = 0,
    ):
        super().__init__()
        sizes = conv_sizes(event_shape, len(hidden))
        chans = [event_shape[0], *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:], strict=True):
            layers += [
                nn.Conv2d(a, b, kernel_size=4, stride=2, padding=1),
                ACTIVATIONS[activation](),
            ]
        self.conv = nn.Sequential(*layers)
        h, w = sizes[-1]
        self.head = nn.Linear(chans[-1] * h * w + cond_dim, out_dim)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        lead = x.shape[:-3]
        h = self.conv(x.reshape(-1, *x.shape[-3:]))
        return self.head(_with_context(h.flatten(1), cond)).unflatten(0, lead)


def decoder_sizes(
    event_shape: tuple[int, ...], hidden: tuple[int, ...], out_shape: tuple[int, ...]
) -> list[tuple[int, int]]:
    """The spatial sizes a convolutional decoder restores (:func:`conv_sizes`), after checking
    that the likelihood's parameters ``out_shape`` end in the image's H and W."""
    if tuple(out_shape[-2:]) != tuple(event_shape[-2:]):
        raise ConfigError(
            f"a convolutional decoder emits images of size {event_shape[-2:]}, not {out_shape}"
        )
    return conv_sizes(event_shape, len(hidden))


class ConvDecoder(nn.Module):
    def __init__(
        self,
        event_shape: tuple[int, ...],
        hidden: tuple[int, ...],
        latent_dim: int,
        activation: str,
        out_shape: tuple[int, ...],
    ):
        super().__init__()
        self.sizes = decoder_sizes(event_shape, hidden, out_shape)
        self.out_shape = tuple(out_shape)
        h, w = self.sizes[-1]
        self.top = (hidden[-1], h, w)
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, hidden[-1] * h * w), ACTIVATIONS[activation]()
        )
        chans = [math.prod(self.out_shape[:-2]), *hidden]
        self.deconvs = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], kernel_size=4, stride=2, padding=1)
            for i in reversed(range(len(hidden)))
        )
        self.act = ACTIVATIONS[activation]()

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        h = self.fc(z.reshape(-1, z.shape[-1])).view(-1, *self.top)
        n = len(self.deconvs)
        for j, deconv in enumerate(self.deconvs):
            h = deconv(h, output_size=list(self.sizes[n - 1 - j]))
            if j < n - 1:
                h = self.act(h)
        return h.view(*lead, *self.out_shape)


class ResBlock(nn.Module):
    """``x + conv_k(act(conv3x3(act(x))))`` at constant channels and size (pre-activation);
    the second kernel is 3 here, 1 in VQ-VAE's blocks (van den Oord et al. 2017)."""

    def __init__(self, channels: int, activation: str, last_kernel: int = 3):
        super().__init__()
        self.body = nn.Sequential(
            ACTIVATIONS[activation](),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            ACTIVATIONS[activation](),
            nn.Conv2d(channels, channels, kernel_size=last_kernel, padding=last_kernel // 2),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNetEncoder(nn.Module):
    """Per level a stride-2 convolution (kernel 4, as ``conv``: ``len(hidden)`` halvings) to
    ``hidden[i]`` channels, then ``blocks`` residual blocks at that resolution; a linear head.

    The residual blocks work at the reduced resolutions only, so the cost at full
    resolution is one convolution each way, as for ``conv``.
    """

    blocks = 2

    def __init__(
        self,
        event_shape: tuple[int, ...],
        hidden: tuple[int, ...],
        out_dim: int,
        activation: str,
        cond_dim: int = 0,
    ):
        super().__init__()
        sizes = conv_sizes(event_shape, len(hidden))
        chans = [event_shape[0], *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:], strict=True):
            layers.append(nn.Conv2d(a, b, kernel_size=4, stride=2, padding=1))
            layers += [ResBlock(b, activation) for _ in range(self.blocks)]
        layers.append(ACTIVATIONS[activation]())
        self.conv = nn.Sequential(*layers)
        h, w = sizes[-1]
        self.head = nn.Linear(hidden[-1] * h * w + cond_dim, out_dim)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        lead = x.shape[:-3]
        h = self.conv(x.reshape(-1, *x.shape[-3:]))
        return self.head(_with_context(h.flatten(1), cond)).unflatten(0, lead)


class ResNetDecoder(nn.Module):
    """The mirror of :class:`ResNetEncoder`: a linear map of z to the smallest grid, then per
    level ``blocks`` residual blocks and a transposed stride-2 convolution (restoring the
    encoder's exact sizes, odd ones included), the last one to the likelihood's channels."""

    blocks = 2

    def __init__(
        self,
        event_shape: tuple[int, ...],
        hidden: tuple[int, ...],
        latent_dim: int,
        activation: str,
        out_shape: tuple[int, ...],
    ):
        super().__init__()
        self.sizes = decoder_sizes(event_shape, hidden, out_shape)
        self.out_shape = tuple(out_shape)
        h, w = self.sizes[-1]
        self.top = (hidden[-1], h, w)
        self.fc = nn.Linear(latent_dim, hidden[-1] * h * w)
        chans = [math.prod(self.out_shape[:-2]), *hidden]
        self.levels = nn.ModuleList(
            nn.Sequential(*[ResBlock(chans[i + 1], activation) for _ in range(self.blocks)])
            for i in reversed(range(len(hidden)))
        )
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], kernel_size=4, stride=2, padding=1)
            for i in reversed(range(len(hidden)))
        )
        self.act = ACTIVATIONS[activation]()

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        h = self.fc(z.reshape(-1, z.shape[-1])).view(-1, *self.top)
        n = len(self.ups)
        for j, (level, up) in enumerate(zip(self.levels, self.ups, strict=True)):
            h = level(h)
            if j == n - 1:
                h = self.act(h)
            h = up(h, output_size=list(self.sizes[n - 1 - j]))
        return h.view(*lead, *self.out_shape)


ENCODERS: dict[str, type[nn.Module]] = {
    "mlp": MLPEncoder,
    "conv": ConvEncoder,
    "resnet": ResNetEncoder,
}
DECODERS: dict[str, type[nn.Module]] = {
    "mlp": MLPDecoder,
    "conv": ConvDecoder,
    "resnet": ResNetDecoder,
}


def decoder_log_likelihood(
    decoder: nn.Module, likelihood: Likelihood, x: Tensor
) -> Callable[[Tensor], Tensor]:
    """log p(x|z) for a fixed batch ``x`` as a function of the decoder's input ``[..., B, d]``.

    An MLP decoder's last layer is fused with the likelihood where the likelihood offers it
    (:meth:`~aevb.likelihoods.Likelihood.linear_log_prob`, the Bernoulli does), with the
    per-example work done here, once; otherwise params are decoded and scored. Without
    autograd on a CPU the hidden layers run folded (:func:`folded_layers`), their scaled
    weights made on the first call and kept: the function is for one batch under fixed
    parameters, as the estimator uses it. Without autograd, ``[S, B, d]`` samples go
    through every layer group by group (:func:`aevb.workspace.groups`), each group's
    samples as one ``[g * B, d]`` matrix of rows: each operation was per group already (the
    same numbers), a group's tensors stay small, and oneDNN's fresh outputs
    (:func:`aevb.workspace.onednn_linear`) are used where they are made, not copied.
    """
    if isinstance(decoder, MLPDecoder):
        fused = likelihood.linear_log_prob(x, decoder.head.weight, decoder.head.bias)
        if fused is not None:
            workspace = Workspace()  # the hidden layers' buffers, reused by every call

            def log_px_z(z: Tensor) -> Tensor:
                if z.dim() != 3 or torch.is_grad_enabled():
                    return fused(decoder.features(z, workspace))
                return torch.cat(
                    [
                        fused(decoder.features(aligned_rows(zg), workspace)).view(zg.shape[:2])
                        for zg in groups(z)
                    ]
                )

            return log_px_z
    # any decoder and likelihood, group by group: see aevb.workspace
    return lambda z: per_group(lambda zg: likelihood.log_prob(x, decoder(zg)), z)


def build_networks(
    arch: str,
    event_shape: tuple[int, ...],
    hidden: tuple[int, ...],
    latent_dim: int,
    activation: str,
    out_shape: tuple[int, ...],
    encoder_out: int | None = None,
    encoder_cond: int = 0,
    decoder_cond: int = 0,
) -> tuple[nn.Module, nn.Module]:
    """(encoder, decoder) for ``arch`` in :data:`ENCODERS` ('mlp', 'conv', 'resnet').

    The encoder emits ``encoder_out`` numbers (default ``2 * latent_dim``: mu and logvar)
    and also takes a context vector of ``encoder_cond`` numbers when that is > 0; the
    decoder maps ``latent_dim + decoder_cond`` numbers (z, then the context) to ``out_shape``.
    """
    if arch not in ENCODERS:
        raise ConfigError(f"unknown --arch {arch!r}; choose one of {sorted(ENCODERS)}")
    if arch != "mlp" and not hidden:
        raise ConfigError(f"--arch {arch} needs at least one entry in --hidden (channels)")
    enc_out = 2 * latent_dim if encoder_out is None else encoder_out
    extra = {"cond_dim": encoder_cond} if encoder_cond else {}
    return (
        ENCODERS[arch](event_shape, hidden, enc_out, activation, **extra),
        DECODERS[arch](event_shape, hidden, latent_dim + decoder_cond, activation, out_shape),
    )

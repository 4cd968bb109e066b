"""VQ-VAE: van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete Representation Learning"
(2017), https://arxiv.org/abs/1711.00937.

A convolutional encoder maps an image to a grid of D-dimensional vectors z_e ``[B, D, h, w]``
(the image halved once per ``--hidden`` entry: ``--hidden 32,32`` turns 8 x 8 digits into
2 x 2 codes, 28 x 28 MNIST into 7 x 7); each vector is replaced by its nearest entry of a
K-entry codebook (:class:`~aevb.quantizer.VectorQuantizer`, eq. 1-3), whose codebook and
commitment losses ride on the posterior as ``aux_loss``; the decoder mirrors the encoder.
Section 3.1 of the paper: q(k|x) is a point mass at the codes k(x) and the prior during
training is uniform, so the KL is the constant h w log K and the ELBO is the
reconstruction term plus that constant.

The second stage (section 3.2) fits an autoregressive prior over the code grids of the
trained encoder: a gated PixelCNN (:mod:`aevb.pixelcnn`) held by this model as
``pixelcnn``, trained by ``aevb train-prior RUN`` (:mod:`aevb.prior_fit`). The buffer
``prior_fitted`` says whether it has been; from then on :meth:`VQVAE.prior` is the
PixelCNN, so ``aevb sample`` draws codes from it and ``aevb evaluate`` reports the bound
``-log p(x) <= -log p(x | z_q) - log p_prior(z_q)`` (the importance-sampled estimator
with a point-mass proposal computes exactly this).

Network (``--arch conv``, the paper's shape with configurable widths): stride-2 4 x 4
convolutions with the ``--hidden`` channels, a 3 x 3 convolution, ``--res-blocks``
residual blocks (ReLU, 3 x 3, ReLU, 1 x 1), a 1 x 1 convolution to D channels; the decoder
is the mirror image with transposed convolutions that restore the exact input size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..discrete import (
    CodePosterior,
    PixelCNNCodePrior,
    UniformCodePrior,
    code_space,
)
from ..errors import ConfigError
from ..latents import Posterior, Prior
from ..likelihoods import likelihood_from_config
from ..pixelcnn import GatedPixelCNN
from ..quantizer import VectorQuantizer, code_perplexity, nearest_code
from .base import Chart, LatentVariableModel
from .networks import ACTIVATIONS, ResBlock, conv_sizes, decoder_sizes
from .registry import register_model


class GridEncoder(nn.Module):
    """Images ``[B, C, H, W]`` -> vectors ``[B, D, h, w]``, h = H halved per hidden layer."""

    def __init__(
        self,
        event_shape: tuple[int, ...],
        hidden: tuple[int, ...],
        code_dim: int,
        res_blocks: int,
        activation: str,
    ):
        super().__init__()
        conv_sizes(event_shape, len(hidden))  # images only, and not too many halvings
        chans = [event_shape[0], *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(a, b, 4, stride=2, padding=1), ACTIVATIONS[activation]()]
        layers.append(nn.Conv2d(hidden[-1], hidden[-1], 3, padding=1))
        layers += [ResBlock(hidden[-1], activation, last_kernel=1) for _ in range(res_blocks)]
        layers += [ACTIVATIONS[activation](), nn.Conv2d(hidden[-1], code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class GridDecoder(nn.Module):
    """Vectors ``[N, D, h, w]`` -> likelihood parameters ``[N, *out_shape]`` (the mirror image)."""

    def __init__(
        self,
        event_shape: tuple[int, ...],
        hidden: tuple[int, ...],
        code_dim: int,
        res_blocks: int,
        activation: str,
        out_shape: tuple[int, ...],
    ):
        super().__init__()
        self.sizes = decoder_sizes(event_shape, hidden, out_shape)
        self.out_shape = tuple(out_shape)
        layers: list[nn.Module] = [nn.Conv2d(code_dim, hidden[-1], 3, padding=1)]
        layers += [ResBlock(hidden[-1], activation, last_kernel=1) for _ in range(res_blocks)]
        layers.append(ACTIVATIONS[activation]())
        self.top = nn.Sequential(*layers)
        chans = [math.prod(self.out_shape[:-2]), *hidden]
        self.deconvs = nn.ModuleList(
            nn.ConvTranspose2d(chans[i + 1], chans[i], kernel_size=4, stride=2, padding=1)
            for i in reversed(range(len(hidden)))
        )
        self.act = ACTIVATIONS[activation]()

    def forward(self, z: Tensor) -> Tensor:
        h = self.top(z)
        n = len(self.deconvs)
        for j, deconv in enumerate(self.deconvs):
            h = deconv(h, output_size=list(self.sizes[n - 1 - j]))
            if j < n - 1:
                h = self.act(h)
        return h.view(len(z), *self.out_shape)


@register_model
class VQVAE(LatentVariableModel):
    """A VQ-VAE on images, with a PixelCNN prior over its codes once ``aevb train-prior`` has run.

    Example:
        >>> import aevb
        >>> config = aevb.RunConfig().replace(
        ...     model="vqvae", arch="conv", hidden=(16, 16), input_shape=(1, 8, 8),
        ...     likelihood="bernoulli", codebook_size=32, code_dim=8,
        ... )
        >>> model = aevb.build_model(config)
        >>> model.posterior(torch.rand(5, 1, 8, 8)).point().shape  # code indices
        torch.Size([5, 2, 2])
    """

    name = "vqvae"

    def __init__(self, config: ModelConfig, sections: Mapping[str, Any]):
        super().__init__()
        if config.arch != "conv":
            raise ConfigError(
                "--model vqvae encodes images into a grid of codes with convolutions: add "
                "--arch conv (--hidden gives the channels of each halving of the image)"
            )
        if not config.hidden:
            raise ConfigError("--model vqvae needs at least one entry in --hidden (channels)")
        self.config = config
        s = sections["vqvae"]
        event_shape = tuple(config.input_shape)
        hidden = tuple(config.hidden)
        self.likelihood = likelihood_from_config(config, sections)
        self.encoder = GridEncoder(event_shape, hidden, s.code_dim, s.res_blocks, config.activation)
        self.decoder = GridDecoder(
            event_shape,
            hidden,
            s.code_dim,
            s.res_blocks,
            config.activation,
            self.likelihood.param_shape,
        )
        self.quantizer = VectorQuantizer(
            s.codebook_size,
            s.code_dim,
            beta=s.commitment,
            ema=s.ema,
            decay=s.ema_decay,
            restart_after=s.restart_after,
        )
        h, w = conv_sizes(event_shape, len(hidden))[-1]
        self.latent = code_space(h, w, s.codebook_size)
        # The second stage's prior: part of the model (one artifact), trained only by
        # `aevb train-prior`, so it takes no gradient while the autoencoder trains.
        self.pixelcnn = GatedPixelCNN(
            s.codebook_size, h, w, s.pixelcnn_channels, s.pixelcnn_layers, s.pixelcnn_kernel
        ).requires_grad_(False)
        self.register_buffer("prior_fitted", torch.zeros((), dtype=torch.long))

    # --- the interface ------------------------------------------------------------------
    def posterior(self, x: Tensor, y: Tensor | None = None) -> Posterior:
        """The point mass at the codes of x; in training mode the quantiser also updates its
        codebook state (EMA, restarts). ``[B, C, H, W]`` -> indices ``[B, h, w]``."""
        z_e = self.encoder(x)
        out = self.quantizer(z_e)
        metrics = dict(out.metrics)
        # A running count: the trainer logs its last value, not an epoch mean.
        metrics["restarts_total"] = metrics.pop("restarts")
        return CodePosterior(z_e, out.quantized.detach(), out.indices, out.aux_loss, metrics)

    def prior(self, y: Tensor | None = None) -> Prior:
        """The fitted PixelCNN over code grids, or (before ``aevb train-prior``) uniform codes."""
        if bool(self.prior_fitted):
            return PixelCNNCodePrior(self.pixelcnn)
        (h, w), k = self.latent.shape, self.latent.classes
        cb = self.quantizer.codebook
        return UniformCodePrior(h, w, k, cb.device, cb.dtype)

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Codes ``[..., h, w]`` (long) or vectors ``[..., D, h, w]`` -> likelihood parameters."""
        vectors = self.quantizer.embed(z) if z.dtype == torch.long else z
        lead = vectors.shape[:-3]
        out = self.decoder(vectors.reshape(-1, *vectors.shape[-3:]))
        return out.view(*lead, *out.shape[1:])

    @torch.no_grad()
    def data_init(self, x: Tensor) -> None:
        """Start the codebook at encoder outputs of training examples (none is far from the data)."""
        z_e = self.encoder(x)
        self.quantizer.init_from(z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1]))

    # --- optional capabilities --------------------------------------------------------------
    def prior_network(self) -> nn.Module:
        return self.pixelcnn

    def set_prior_fitted(self, fitted: bool = True) -> None:
        self.prior_fitted.fill_(int(fitted))

    @torch.no_grad()
    def charts(self, x: Tensor, y: Tensor | None = None) -> dict[str, Chart]:
        """``codebook_usage``: how many code positions of the test examples chose each entry."""
        z_e = self.encoder(x)  # the nearest entries directly: no quantiser state is touched
        idx = nearest_code(
            z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1]), self.quantizer.codebook
        )
        k = self.quantizer.num_codes
        counts = torch.bincount(idx, minlength=k).to(torch.float64)
        used, ppl = int((counts > 0).sum()), float(code_perplexity(counts))
        title = (
            f"codebook usage over {len(x)} test examples: {used} of {k} entries used, "
            f"perplexity {ppl:.1f}"
        )
        return {
            "codebook_usage": Chart(
                "bars",
                counts.sort(descending=True).values.float().cpu(),
                title,
                xlabel="codebook entries, most used first",
                ylabel="code positions that chose the entry",
            )
        }

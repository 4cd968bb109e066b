"""The conditional VAE: generation given a class label, or completion of an image given part of it.

K. Sohn, H. Lee, X. Yan, "Learning Structured Output Representation using Deep Conditional
Generative Models", NeurIPS 2015; C. Doersch, "Tutorial on Variational Autoencoders", 2016,
https://arxiv.org/abs/1606.05908, section 4. A context c conditions every part of the model:

    q(z | x, c)  = N(mu(x, c), diag exp(logvar(x, c)))              (the encoder)
    p(z | c)     = N(0, I)  or, with --conditional-prior, N(mu_p(c), diag exp(logvar_p(c)))
    p(x | z, c)  = the --likelihood with parameters decoder([z, c])  (the decoder)

    ELBO(x | c)  = E_q[log p(x | z, c)] - KL(q(z | x, c) || p(z | c))   <= log p(x | c)

and ``aevb evaluate`` estimates log p(x | c) by importance sampling with q(z | x, c) as the
proposal. Two kinds of context (``--condition``):

* ``label`` (``--model cvae``): c is the class y of each example, fed to the networks as a
  one-hot vector (``--label-embedding onehot``) or a learned embedding of ``--context-dim``
  numbers (``learned``). The data must have labels. Sampling a class holds y fixed and
  draws z; one z decoded with every y keeps the style and changes the class.
* ``mask`` (``--condition mask --mask top|left|center|random``): image completion. A fixed
  0/1 mask m over the pixels (all channels) splits each image into its observed part
  ``x_obs = m * x`` and its missing part ``x_mis = (1 - m) * x``; c is ``x_obs``, seen by
  the networks through a feature vector h(x_obs) of ``--context-dim`` numbers (an encoder
  network of the same ``--arch`` and ``--hidden``). The model is

      q(z | x_mis, x_obs)  (the encoder sees the whole image x and h(x_obs)),
      p(z | x_obs)         (N(0, I), or learned with --conditional-prior),
      p(x_mis | z, x_obs)  = prod over missing sites of the likelihood (the observed
                             sites are not scored: log p(x | z, c) sums over m = 0 only),

  so evaluation reports log p(x_mis | x_obs) and bits per *missing* dimension, and every
  decoded image keeps its observed pixels exactly as given. Masks (H x W images):
  ``top`` observes rows ``0 .. H/2 - 1``; ``left`` columns ``0 .. W/2 - 1``; ``center``
  the ``max(1, W // 8)`` central columns (Doersch's MNIST experiment conditions on the
  central column); ``random`` a fixed half of the pixels drawn from ``--mask-seed``.

The ``vae`` section's ``latent_dim`` sets the size of z; the networks follow ``--arch`` and
``--hidden`` as for the VAE.

Example (the Python API; ``y`` is the context: labels here):

    >>> import torch, aevb
    >>> config = aevb.RunConfig().replace(
    ...     model="cvae", dataset="digits", latent_dim=4, hidden=(64,), steps=40, figures=False)
    >>> result = aevb.train(config, "runs/cvae-digits", progress=False)
    >>> model = result.model
    >>> threes = model.sample(8, y=torch.full((8,), 3))   # [8, 1, 8, 8]: eight 3s
    >>> every_class = model.sample(20)                     # y = 0, 1, ..., 9, 0, 1, ...
    >>> data = aevb.load_dataset(config.data)
    >>> report = aevb.evaluate(model, data, "test", k=50)  # log p(x|y) by importance sampling
    >>> report["log_px_iw"] >= -report["neg_elbo"] - 3 * report["gap_se"]
    True

and for completion, ``replace(model="cvae", condition="mask", mask="top", ...)``, then
``model.complete(x, 8)``: 8 completions ``[8, B, *event]`` of each image of ``x``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import ConfigError, DataError
from ..latents import (
    ConditionalGaussian,
    DiagonalGaussian,
    Posterior,
    Prior,
    StandardNormal,
    gaussian_space,
)
from ..likelihoods import likelihood_from_config
from .base import LatentVariableModel
from .networks import ENCODERS, build_networks, mlp
from .registry import register_model

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..data.base import DatasetInfo

MASKS = ("top", "left", "center", "random")


def observed_mask(kind: str, event_shape: tuple[int, ...], seed: int = 0) -> Tensor:
    """The observed pixels of ``--mask kind`` as a bool tensor ``[C, H, W]`` (same for every channel).

    Raises:
        ConfigError: data that are not images, or an unknown mask.
    """
    if len(event_shape) != 3:
        raise ConfigError(
            f"--condition mask completes images (C, H, W), but examples have shape "
            f"{tuple(event_shape)}; use --condition label"
        )
    c, h, w = event_shape
    if min(h, w) < 2:
        raise ConfigError(f"--condition mask needs images of at least 2x2 pixels, got {h}x{w}")
    m = torch.zeros(h, w, dtype=torch.bool)
    if kind == "top":
        m[: h // 2] = True
    elif kind == "left":
        m[:, : w // 2] = True
    elif kind == "center":
        width = max(1, w // 8)
        start = (w - width) // 2
        m[:, start : start + width] = True
    elif kind == "random":
        g = torch.Generator().manual_seed(seed)
        m.view(-1)[torch.randperm(h * w, generator=g)[: (h * w) // 2]] = True
    else:
        raise ConfigError(f"--mask must be one of {list(MASKS)}, got {kind!r}")
    return m.expand(c, h, w).clone()


@register_model
class CVAE(LatentVariableModel):
    """A conditional VAE: q(z|x, c), p(z|c), p(x|z, c); c a label or an observed part (module docstring)."""

    name = "cvae"
    priors = ("standard",)

    def __init__(self, config: ModelConfig, sections: Mapping[str, Any]):
        super().__init__()
        self.config = config
        cc = sections["cvae"]
        self.cvae_config = cc
        dim = sections["vae"].latent_dim
        event_shape = tuple(config.input_shape)
        self.likelihood = likelihood_from_config(config, sections)
        if cc.condition == "label":
            if cc.num_classes is None:
                raise ConfigError(
                    "--model cvae needs the number of classes; it is set from labelled data"
                )
            self.conditions_on = "labels"
            self.num_classes = cc.num_classes
            self.log_px_name = "log p(x | y)"
            if cc.label_embedding == "learned":
                self.embedding = nn.Embedding(cc.num_classes, cc.context_dim)
                context_dim = cc.context_dim
            else:
                context_dim = cc.num_classes
        else:
            self.conditions_on = "observed"
            self.log_px_name = "log p(x_missing | x_observed)"
            self.register_buffer(
                "observed", observed_mask(cc.mask, event_shape, cc.mask_seed), persistent=False
            )
            # h(x_obs): the observed part's features, by a network of the model's own kind.
            self.context_net = ENCODERS[config.arch](
                event_shape, tuple(config.hidden), cc.context_dim, config.activation
            )
            context_dim = cc.context_dim
        self.encoder, self.decoder = build_networks(
            config.arch,
            event_shape,
            tuple(config.hidden),
            dim,
            config.activation,
            self.likelihood.param_shape,
            encoder_cond=context_dim,
            decoder_cond=context_dim,
        )
        if cc.conditional_prior:
            width = config.hidden[-1] if config.hidden else 64
            self.prior_net = mlp([context_dim, width, 2 * dim], config.activation)
        self.latent = gaussian_space(dim, standard_normal=not cc.conditional_prior)

    @classmethod
    def fit_config(cls, config: RunConfig, info: DatasetInfo) -> RunConfig:
        """Label conditioning: the classes come from the data, which must have labels."""
        cc = config.cvae
        if cc.condition != "label":
            return config
        if info.num_classes is None:
            raise DataError(
                f"--model cvae conditions on class labels, but {info.name} has none; give "
                "labelled data (class folders, --label-column, y in an .npz) or use "
                "--condition mask"
            )
        if cc.num_classes is None:
            return config.replace(**{"cvae.num_classes": info.num_classes})
        if info.num_classes > cc.num_classes:
            raise DataError(
                f"{info.name} has {info.num_classes} classes but the model knows {cc.num_classes}"
            )
        return config

    # --- the context ----------------------------------------------------------------------
    def context(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Labels ``[B]`` (label conditioning), or the observed part ``m * x`` ``[B, *event]``."""
        if self.conditions_on == "observed":
            return x * self.observed.to(x.dtype)
        if y is None:
            raise DataError(
                "this model conditions on class labels, but the data came without them; give "
                "labelled data"
            )
        return y

    def default_context(self, n: int) -> Tensor:
        """Every class in turn, ``[0, 1, ..., C-1, 0, ...]`` (label conditioning)."""
        if self.conditions_on == "observed":
            raise ConfigError(
                "this model completes images given their observed part, so it cannot sample "
                "without one: use `aevb complete RUN --input IMAGE` (model.complete(x, n))"
            )
        return torch.arange(n, device=self.device) % self.num_classes

    def _vector(self, c: Tensor | None) -> Tensor:
        """The context as the networks see it: ``[B, context_dim]``."""
        if c is None:
            self.default_context(1)  # raises for completion models
            raise ConfigError(
                "this model conditions on class labels: pass them (y, [B] integers), or use "
                "sample(n), which takes every class in turn"
            )
        if self.conditions_on == "observed":
            if tuple(c.shape[1:]) != tuple(self.observed.shape):
                raise ConfigError(
                    f"a completion model's context is the observed image part "
                    f"[B, {', '.join(map(str, self.observed.shape))}], got {tuple(c.shape)}"
                )
            return self.context_net(c)
        if c.is_floating_point() or c.dim() != 1:
            raise ConfigError(f"class labels must be integers [B], got {c.dtype} {tuple(c.shape)}")
        if len(c) and (int(c.min()) < 0 or int(c.max()) >= self.num_classes):
            raise DataError(
                f"labels must be 0..{self.num_classes - 1} for this model, got "
                f"{int(c.min())}..{int(c.max())}"
            )
        if hasattr(self, "embedding"):
            return self.embedding(c)
        return F.one_hot(c, self.num_classes).to(next(self.parameters()).dtype)

    # --- the interface ----------------------------------------------------------------------
    def posterior(self, x: Tensor, y: Tensor | None = None) -> Posterior:
        """q(z|x, c): ``[B, *event]`` -> ``[B, D]`` parameters (a completion model takes c from x)."""
        c = self.context(x, y) if self.conditions_on == "observed" else y
        mu, logvar = self.encoder(x, self._vector(c)).chunk(2, dim=-1)
        return DiagonalGaussian(mu, logvar)

    def prior(self, y: Tensor | None = None) -> Prior:
        """N(0, I), or p(z|c) = N(mu_p(c), diag exp(logvar_p(c))) for ``[B]`` contexts."""
        if hasattr(self, "prior_net"):
            mu, logvar = self.prior_net(self._vector(y)).chunk(2, dim=-1)
            return ConditionalGaussian(mu, logvar)
        w = next(self.parameters())
        return StandardNormal(self.latent.shape[0], w.device, w.dtype)

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """p(x|z, c)'s parameters: ``z`` ``[..., B, D]`` (or ``[..., 1, D]``, one z for every
        example), c for the B examples -> ``[..., B, *param_shape]``."""
        v = self._vector(y)
        lead = torch.broadcast_shapes(z.shape[:-1], v.shape[:-1])  # z may be shared: [S, 1, D]
        z, v = z.expand(*lead, z.shape[-1]), v.expand(*lead, v.shape[-1])
        return self.decoder(torch.cat([z, v], dim=-1))

    def log_likelihood(self, x: Tensor, z: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(x|z, c) ``[S, B]``; a completion model scores the missing part only."""
        if self.conditions_on == "observed":
            params = self.decode(z, self.context(x))
            return self.likelihood.log_prob_where(x, params, self.scored_mask)
        return self.likelihood.log_prob(x, self.decode(z, y))

    @property
    def scored_mask(self) -> Tensor | None:
        if self.conditions_on == "observed":
            return (~self.observed).to(torch.float32)
        return None

    @torch.no_grad()
    def generate(
        self,
        z: Tensor,
        y: Tensor | None = None,
        mean: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Decode (E[x|z, c] or a draw); a completion model pastes its observed part back exactly."""
        x = super().generate(z, y, mean=mean, generator=generator)
        if self.conditions_on == "observed":
            x = torch.where(self.observed, y.to(x.dtype), x)
        return x

    @torch.no_grad()
    def complete(
        self,
        x: Tensor,
        n: int,
        temperature: float = 1.0,
        mean: bool = False,
        generator: torch.Generator | None = None,
        mask: str | None = None,
    ) -> Tensor:
        """``n`` completions of each image: ``[B, *event]`` -> ``[n, B, *event]``.

        z ~ p(z | x_obs) (at ``temperature``), then x_mis from p(x_mis | z, x_obs) (its mean
        with ``mean=True``); the observed pixels are those of ``x``, bit for bit. ``mask``
        names the observed part the caller means; it must be the model's (``--mask``).
        """
        if self.conditions_on != "observed":
            raise ConfigError(
                "this model conditions on class labels, not on part of an image: sample a class "
                "with `aevb sample RUN --label K` (model.sample(n, y=labels))"
            )
        trained = self.cvae_config.mask
        if mask is not None and mask != trained:
            raise ConfigError(
                f"this model was trained to observe the {trained} part (--mask {trained}) and "
                f"can complete only from it, not from --mask {mask}; train one with --mask {mask}"
            )
        c = self.context(x).repeat(n, *([1] * (x.dim() - 1)))  # [n * B, *event]
        out = self.sample(len(c), temperature, mean=mean, generator=generator, y=c)
        return out.view(n, *x.shape)

"""A gated PixelCNN over grids of codes: the autoregressive prior of a VQ-VAE.

Reference: van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves & Kavukcuoglu,
"Conditional Image Generation with PixelCNN Decoders" (2016),
https://arxiv.org/abs/1606.05328 — eq. (2) for the gated unit, Figure 2 for the vertical and
horizontal stacks that remove the blind spot of the original masked PixelCNN.

The model factorises a grid of codes in raster order (row by row, left to right)::

    log p(k) = sum_{i,j} log p(k_ij | k_<ij),   k in {0..K-1}^{H x W}

Causality comes from masked convolutions. The vertical stack at (i, j) sees only rows above
i (all columns within its receptive field); the horizontal stack sees the codes left of j
in row i plus the vertical stack at (i, j). The first layer masks the centre (the code
being predicted); later layers may include it, since their inputs at (i, j) already depend
only on codes before (i, j). The first layer has no residual connection for the same reason.

Shapes: B grids of H x W codes, C hidden channels, K classes; logits are ``[B, K, H, W]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def vertical_mask(kernel_size: int, include_centre_row: bool) -> Tensor:
    """``[k, k]`` mask of the vertical stack: the rows above the centre (and the centre row)."""
    mask = torch.ones(kernel_size, kernel_size)
    centre = kernel_size // 2
    mask[centre + (1 if include_centre_row else 0) :] = 0.0
    return mask


def horizontal_mask(kernel_size: int, include_centre: bool) -> Tensor:
    """``[1, k]`` mask of the horizontal stack: the columns left of the centre (and the centre)."""
    mask = torch.ones(1, kernel_size)
    centre = kernel_size // 2
    mask[:, centre + (1 if include_centre else 0) :] = 0.0
    return mask


def gate(x: Tensor) -> Tensor:
    """The gated activation ``tanh(a) * sigmoid(b)`` of eq. (2): ``[B, 2C, H, W] -> [B, C, H, W]``."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class MaskedConv2d(nn.Conv2d):
    """A 'same'-padded convolution whose kernel is multiplied by a fixed 0/1 mask ``[kh, kw]``."""

    def __init__(self, in_channels: int, out_channels: int, mask: Tensor) -> None:
        kh, kw = mask.shape
        super().__init__(in_channels, out_channels, (kh, kw), padding=(kh // 2, kw // 2))
        self.register_buffer("mask", mask, persistent=False)  # derived: not in the state dict

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class GatedLayer(nn.Module):
    """One gated layer: ``(v, h) [B, C, H, W] each -> (v', h')`` (Figure 2 of the paper)."""

    def __init__(self, channels: int, kernel_size: int, first: bool) -> None:
        super().__init__()
        c = channels
        self.first = first
        self.vertical = MaskedConv2d(c, 2 * c, vertical_mask(kernel_size, not first))
        self.horizontal = MaskedConv2d(c, 2 * c, horizontal_mask(kernel_size, not first))
        self.vertical_to_horizontal = nn.Conv2d(2 * c, 2 * c, 1)
        self.horizontal_out = nn.Conv2d(c, c, 1)

    def forward(self, v: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        v_feat = self.vertical(v)  # at (i, j): rows < i only
        h_feat = self.horizontal(h) + self.vertical_to_horizontal(v_feat)
        h_out = self.horizontal_out(gate(h_feat))
        if not self.first:  # the first layer's input at (i, j) is the code to predict
            h_out = h_out + h
        return gate(v_feat), h_out


class GatedPixelCNN(nn.Module):
    """p(k) over ``H x W`` grids of K codes, autoregressive in raster order.

    Args:
        num_codes: K, the number of classes of each code.
        height, width: the grid shape that :meth:`sample` draws (the convolutions accept any).
        channels: C, hidden channels.
        layers: gated layers (the receptive field grows by ``kernel_size // 2`` per layer).
        kernel_size: odd, at least 3.
    """

    def __init__(
        self,
        num_codes: int,
        height: int,
        width: int,
        channels: int = 64,
        layers: int = 6,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size}")
        if layers < 1:
            raise ValueError(f"need at least one gated layer, got {layers}")
        self.num_codes, self.height, self.width = num_codes, height, width
        self.embedding = nn.Embedding(num_codes, channels)
        self.layers = nn.ModuleList(
            GatedLayer(channels, kernel_size, first=(i == 0)) for i in range(layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
            nn.ReLU(),
            nn.Conv2d(channels, num_codes, 1),
        )

    def logits(self, indices: Tensor) -> Tensor:
        """``[B, H, W]`` (long) -> ``[B, K, H, W]``: logits of code (i, j) given the codes before it."""
        x = self.embedding(indices).permute(0, 3, 1, 2)  # [B, C, H, W]
        v, h = x, x
        for layer in self.layers:
            v, h = layer(v, h)
        return self.head(h)

    def log_prob_per_code(self, indices: Tensor) -> Tensor:
        """``[B, H, W]`` -> ``[B, H, W]``: log p(k_ij | k_<ij) in nats."""
        return -F.cross_entropy(self.logits(indices), indices, reduction="none")

    def log_prob(self, indices: Tensor) -> Tensor:
        """``[B, H, W]`` (long) -> ``[B]``: log p(k) in nats, summed over the grid."""
        return self.log_prob_per_code(indices).sum((1, 2))

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[n, H, W]`` (long) grids drawn code by code in raster order from softmax(logits / T).

        T = 0 is the limit: the most probable code at each step (greedy). One forward pass
        per code (H * W passes). ``generator`` must be on the model's device.
        """
        if not temperature >= 0:
            raise ValueError(f"the sampling temperature must be >= 0, got {temperature}")
        device = self.embedding.weight.device
        grid = torch.zeros(n, self.height, self.width, dtype=torch.long, device=device)
        for i in range(self.height):
            for j in range(self.width):
                logits = self.logits(grid)[:, :, i, j]
                if temperature == 0:
                    grid[:, i, j] = logits.argmax(1)
                    continue
                probs = torch.softmax(logits / temperature, dim=1)
                grid[:, i, j] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return grid

"""Vector quantisation: VQ-VAE's bottleneck, a learned codebook with a straight-through gradient.

Reference: van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete Representation Learning"
(2017), https://arxiv.org/abs/1711.00937 — eq. (1)-(2) for the nearest-neighbour
quantisation, eq. (3) for the loss, Appendix A.1 for the exponential-moving-average codebook.

Shapes: B examples, a grid of H x W encoder vectors of dimension D, a codebook of K entries.
The encoder output ``z_e`` is ``[B, D, H, W]``; the indices are ``[B, H, W]`` (long).

The loss of eq. (3), per example and in the same units as a summed log-likelihood::

    aux_loss = ||sg(z_e) - e||^2 + beta ||z_e - sg(e)||^2     (summed over D, H and W)

The first (codebook) term is dropped with ``ema=True``: the codebook then follows the
moving averages of the vectors assigned to it instead of a gradient.

Data parallel (torch.distributed initialised, world size > 1): in training mode the
cluster counts, the EMA sums and the per-rank batch sizes are summed over the ranks in one
all-reduce per step, so every rank updates and restarts the codebook exactly as one
process holding the global batch would (rank r's vectors are rows ``offset_r ...`` of the
global batch, the layout of :mod:`aevb.distributed`). In eval mode nothing is
communicated (ranks may see different numbers of batches) and metrics are per rank.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .distributed import all_reduce_sum
from .distributions import straight_through


class Quantized(NamedTuple):
    """What :class:`VectorQuantizer` returns.

    Attributes:
        quantized: ``[B, D, H, W]`` the nearest codebook entries z_q in the forward pass,
            with the gradient of z_e in the backward pass (straight-through, eq. 3).
        indices: ``[B, H, W]`` (long) the chosen entries.
        aux_loss: ``[B]`` codebook + commitment loss per example (summed over D, H, W).
        metrics: scalar diagnostics: ``usage`` (fraction of entries used in the batch),
            ``perplexity`` (exp of the entropy of the batch's code frequencies), ``restarts``
            (dead entries re-initialised so far), ``commitment`` (batch mean of
            ||z_e - e||^2 per example, without beta).
    """

    quantized: Tensor
    indices: Tensor
    aux_loss: Tensor
    metrics: dict[str, Tensor]


# --- the math, as pure functions -----------------------------------------------------------
def nearest_code(z: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest entry by squared distance (eq. 1), with one matmul.

    ``||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2``; ``||z||^2`` is the same for every entry,
    so the argmin needs only ``||e||^2 - 2 z.e`` (one ``addmm``, ``[N, K]``).

    Args:
        z: ``[N, D]`` vectors.
        codebook: ``[K, D]`` entries.

    Returns:
        ``[N]`` (long) indices in ``0..K-1`` (the lowest index on an exact tie).
    """
    scores = torch.addmm(codebook.pow(2).sum(1), z, codebook.t(), alpha=-2.0)
    return scores.argmin(1)


def laplace_smoothed_counts(counts: Tensor, eps: float) -> Tensor:
    """``(N_i + eps) / (n + K eps) * n`` with ``n = sum_i N_i``: no entry's count is 0.

    Args:
        counts: ``[K]`` (moving-average) cluster sizes.
        eps: the pseudo-count.

    Returns:
        ``[K]`` smoothed counts with the same total ``n``.
    """
    n = counts.sum()
    return (counts + eps) / (n + counts.shape[0] * eps) * n


def code_perplexity(counts: Tensor) -> Tensor:
    """``exp(-sum_k p_k log p_k)`` with ``p = counts / sum(counts)``: K when all are used alike.

    Args:
        counts: ``[K]`` how many vectors chose each entry.

    Returns:
        ``[]`` the perplexity (1 for a batch that uses one entry).
    """
    p = counts / counts.sum().clamp_min(1)
    return torch.exp(-torch.special.xlogy(p, p).sum())


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# --- the module ------------------------------------------------------------------------------
class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantisation of ``[B, D, H, W]`` encoder outputs to K learned entries.

    Args:
        num_codes: K, codebook entries.
        dim: D, the dimension of each entry (the encoder's channels).
        beta: weight of the commitment loss (0.25 in the paper).
        ema: update the codebook by exponential moving averages (Appendix A.1) instead of
            the codebook loss; the entries are then buffers, not parameters.
        decay: the EMA decay gamma.
        eps: the Laplace pseudo-count of the EMA cluster sizes.
        restart_after: re-initialise an entry that no vector chose for this many training
            steps in a row from a vector of the current (global) batch, picked uniformly
            with the global torch RNG; 0 disables restarts.

    State (all in the state dict, so a resumed run continues bit for bit): ``codebook``
    ``[K, D]``; with ``ema``, ``ema_cluster_size`` ``[K]`` and ``ema_embed_sum`` ``[K, D]``;
    ``unused_steps`` ``[K]`` and ``restarts`` ``[]``. The EMA state starts as if each entry
    had been chosen once by itself (cluster size 1, sum = the entry): an entry that is never
    chosen then stays put (its sum and count decay together) instead of being divided by a
    vanishing count.

    Example::

        vq = VectorQuantizer(num_codes=512, dim=64)
        out = vq(z_e)                        # z_e [B, 64, H, W]
        x_logits = decoder(out.quantized)
        loss = recon_nll + out.aux_loss      # both [B]
    """

    def __init__(
        self,
        num_codes: int = 512,
        dim: int = 64,
        beta: float = 0.25,
        ema: bool = False,
        decay: float = 0.99,
        eps: float = 1e-5,
        restart_after: int = 0,
    ) -> None:
        super().__init__()
        if num_codes < 1 or dim < 1:
            raise ValueError(f"need num_codes >= 1 and dim >= 1, got {num_codes} and {dim}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"the EMA decay must be in [0, 1), got {decay}")
        if restart_after < 0:
            raise ValueError(f"restart_after must be >= 0 steps (0 disables), got {restart_after}")
        self.num_codes, self.dim, self.beta = num_codes, dim, beta
        self.ema, self.decay, self.eps, self.restart_after = ema, decay, eps, restart_after
        # Uniform in +-1/K, a common choice of PyTorch re-implementations; entries that start
        # far from the data are what restart_after is for.
        init = torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if ema:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_cluster_size", torch.ones(num_codes))
            self.register_buffer("ema_embed_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("unused_steps", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return (
            f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}, ema={self.ema}, "
            f"decay={self.decay}, restart_after={self.restart_after}"
        )

    @torch.no_grad()
    def init_from(self, vectors: Tensor) -> None:
        """Set the entries to rows of ``vectors`` ``[N, D]`` (encoder outputs), picked with the
        global torch RNG: without replacement when N >= K, else with. The EMA state restarts
        as if each entry had been chosen once by itself."""
        if vectors.dim() != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"init_from takes [N, {self.dim}] vectors, got {list(vectors.shape)}")
        n, k = vectors.shape[0], self.num_codes
        pick = torch.randperm(n)[:k] if n >= k else torch.randint(n, (k,))
        self.codebook.copy_(vectors[pick.to(vectors.device)].to(self.codebook.dtype))
        if self.ema:
            self.ema_cluster_size.fill_(1.0)
            self.ema_embed_sum.copy_(self.codebook)
        self.unused_steps.zero_()

    def embed(self, indices: Tensor) -> Tensor:
        """The entries at ``indices``: ``[..., H, W]`` (long) -> ``[..., D, H, W]``."""
        return F.embedding(indices, self.codebook).movedim(-1, -3)

    def forward(self, z_e: Tensor) -> Quantized:
        """Quantise ``z_e`` ``[B, D, H, W]``; in training mode also update the codebook state."""
        if z_e.dim() != 4 or z_e.shape[1] != self.dim:
            raise ValueError(
                f"VectorQuantizer(dim={self.dim}) takes [B, {self.dim}, H, W], got "
                f"{list(z_e.shape)}; make the encoder output {self.dim} channels"
            )
        b, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)  # [B*H*W, D], example-major rows
        with torch.no_grad():
            indices = nearest_code(flat, self.codebook)
        e = F.embedding(indices, self.codebook)  # [B*H*W, D]
        commitment = (flat - e.detach()).pow(2).reshape(b, -1).sum(1)  # [B]
        aux_loss = self.beta * commitment
        if not self.ema:
            aux_loss = aux_loss + (flat.detach() - e).pow(2).reshape(b, -1).sum(1)
        z_q = e.detach().view(b, h, w, d).permute(0, 3, 1, 2)
        quantized = straight_through(z_q, z_e)  # value z_q exactly, gradient to z_e

        with torch.no_grad():
            if self.training:
                counts = self._train_step(flat.detach(), indices)
            else:
                counts = torch.bincount(indices, minlength=self.num_codes).to(flat.dtype)
            metrics = {
                "usage": (counts > 0).to(flat.dtype).mean(),
                "perplexity": code_perplexity(counts),
                "restarts": self.restarts.to(flat.dtype),
                "commitment": commitment.detach().mean(),
            }
        return Quantized(quantized, indices.view(b, h, w), aux_loss, metrics)

    # --- training-mode state updates (no gradient) -------------------------------------------
    def _train_step(self, flat: Tensor, indices: Tensor) -> Tensor:
        """Global counts ``[K]`` of this step; EMA update and restarts. ``flat`` ``[N, D]``."""
        k = self.num_codes
        flat = flat.to(self.codebook.dtype)  # book-keeping in the codebook's precision
        rank, world = _rank_and_world()
        counts = torch.bincount(indices, minlength=k).to(flat.dtype)
        sizes = flat.new_zeros(world)
        sizes[rank] = flat.shape[0]
        if self.ema:
            # index_put_ rather than index_add_: deterministic on CUDA (sorts instead of
            # atomics), and on CPU its threads do not stall when cores are shared.
            embed_sum = flat.new_zeros(k, self.dim).index_put_((indices,), flat, accumulate=True)
        if world > 1:  # one collective: [counts K | sizes W | embed sums K*D]
            parts = [counts, sizes] + ([embed_sum.flatten()] if self.ema else [])
            packed = all_reduce_sum(torch.cat(parts))
            counts, sizes = packed[:k], packed[k : k + world]
            if self.ema:
                embed_sum = packed[k + world :].view(k, self.dim)
        if self.ema:
            self.ema_cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
            self.ema_embed_sum.mul_(self.decay).add_(embed_sum, alpha=1.0 - self.decay)
            smoothed = laplace_smoothed_counts(self.ema_cluster_size, self.eps)
            self.codebook.copy_(self.ema_embed_sum / smoothed.unsqueeze(1))
        if self.restart_after > 0:
            self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
            dead = (self.unused_steps >= self.restart_after).nonzero().squeeze(1)
            if dead.numel() > 0:  # the same on every rank: the counts are global
                self._restart(dead, flat, sizes, rank)
        return counts

    def _restart(self, dead: Tensor, flat: Tensor, sizes: Tensor, rank: int) -> None:
        """Set entries ``dead`` ``[M]`` to vectors of the global batch picked uniformly.

        Every rank draws the same global row numbers from the global CPU RNG (kept in step on
        all ranks); each fills in the rows it holds and a sum over the ranks completes them.
        """
        total = int(sizes.sum().item())
        offset = int(sizes[:rank].sum().item())
        pick = torch.randint(total, (dead.numel(),)).to(flat.device) - offset
        mine = (pick >= 0) & (pick < flat.shape[0])
        fresh = flat.new_zeros(dead.numel(), self.dim)
        fresh[mine] = flat[pick[mine]]
        if sizes.numel() > 1:
            all_reduce_sum(fresh)
        self.codebook[dead] = fresh
        if self.ema:
            self.ema_cluster_size[dead] = 1.0
            self.ema_embed_sum[dead] = fresh
        self.unused_steps[dead] = 0
        self.restarts.add_(dead.numel())

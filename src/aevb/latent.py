"""Walking the latent space: interpolation paths, the 2-D manifold grid and traversals (pure functions)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .latents import LatentSpace


def lerp(z0: Tensor, z1: Tensor, steps: int) -> Tensor:
    """Straight line from z0 to z1: ``[D]``, ``[D]`` -> ``[steps, D]`` (endpoints included)."""
    t = torch.linspace(0, 1, steps, dtype=z0.dtype, device=z0.device).unsqueeze(1)
    return (1 - t) * z0 + t * z1


def slerp(z0: Tensor, z1: Tensor, steps: int) -> Tensor:
    """Spherical interpolation (great circle, norm interpolated linearly): ``[steps, D]``.

    Under a N(0, I) prior, points on the straight line between two typical latents have
    atypically small norm; slerp keeps the path in the prior's typical shell.
    """
    t = torch.linspace(0, 1, steps, dtype=z0.dtype, device=z0.device).unsqueeze(1)
    n0, n1 = z0.norm(), z1.norm()
    u0, u1 = z0 / n0.clamp_min(1e-12), z1 / n1.clamp_min(1e-12)
    omega = torch.arccos((u0 * u1).sum().clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    if float(so) < 1e-6:
        return lerp(z0, z1, steps)
    direction = (torch.sin((1 - t) * omega) * u0 + torch.sin(t * omega) * u1) / so
    return direction * ((1 - t) * n0 + t * n1)


def manifold_grid(grid: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Latents z = Phi^-1(u) over a uniform grid u in (0, 1)^2, as in the paper's Fig. 4.

    The grid takes ``u_i = (i + 1/2) / grid``, so no point sits at the infinite ends.

    Returns:
        ``[grid * grid, 2]`` latents, row-major with the second coordinate decreasing down
        the rows (so the picture has z_2 pointing up).
    """
    u = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    z = torch.special.ndtri(u)
    z1, z2 = torch.meshgrid(z, z.flip(0), indexing="xy")
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=1).to(dtype)


def traversal_latents(base: Tensor, units: Tensor, values: Tensor, latent: LatentSpace) -> Tensor:
    """Rows of latents that each move one unit of ``base``: ``[*z]`` -> ``[R, S, *z]``.

    Row r, column s is ``base`` with unit ``units[r]`` set to ``values[r, s]``; every other
    entry of z is ``base``'s. A unit is an entry of a continuous z (flattened), a variable of
    a categorical z ``(V, C)`` (set to the one-hot of class ``values[r, s]``), or a position
    of a code grid (set to code ``values[r, s]``).

    Args:
        base: ``[*z]`` the latent every row starts from.
        units: ``[R]`` (long) flat unit indices.
        values: ``[R, S]`` the values each row sweeps.
        latent: the model's :class:`~aevb.latents.LatentSpace` (its kind and shape).
    """
    r, s = values.shape
    rows = torch.arange(r, device=base.device)[:, None]
    cols = torch.arange(s, device=base.device)[None, :]
    if latent.kind == "categorical":
        c = latent.shape[-1]
        z = base.reshape(-1, c).expand(r, s, -1, c).clone()  # [R, S, V, C]
        z[rows, cols, units[:, None]] = torch.nn.functional.one_hot(values.long(), c).to(z.dtype)
    else:
        z = base.reshape(-1).expand(r, s, -1).clone()  # [R, S, numel]
        z[rows, cols, units[:, None]] = values.to(z.dtype)
    return z.reshape(r, s, *latent.shape)

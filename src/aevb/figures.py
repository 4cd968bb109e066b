"""Every picture aevb draws (matplotlib, Agg backend, PNG files).

Image data (C, H, W) is shown as image grids; 2-D data as scatter plots; other vectors
as heat-map rows. ``draw_run_figures`` writes the set that ``aevb train`` leaves in
``RUN/figures/``; the CLI commands write the same pictures under the same names
(:data:`FIGURE_NAMES`). Models are used only through their interface, so every figure
that makes sense for a model's latent space is drawn for it: the manifold grid only for a
2-D standard-normal latent, spherical interpolation only for a standard-normal one.
Conditional models are shown given their context: a label-conditioned model also gets
one row per class decoded from shared latents (``classes.png``), a completion model gets
completions of test images (``completions.png``) in place of samples from the prior.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from . import checkpoint as ckpt  # noqa: E402
from .data.base import DataSource  # noqa: E402
from .errors import ConfigError  # noqa: E402
from .latent import lerp, manifold_grid, slerp  # noqa: E402
from .models.base import Chart  # noqa: E402

# One name per picture, for `aevb train` (RUN/figures/) and the CLI's default outputs alike.
FIGURE_NAMES = {
    "samples": "samples.png",
    "reconstructions": "reconstructions.png",
    "interpolation": "interpolation.png",
    "manifold": "manifold.png",
    "latents": "latents.png",
    "curves": "curves.png",
    "traversals": "traversals.png",
    "posterior_vs_prior": "posterior_vs_prior.png",
    "classes": "classes.png",
    "completions": "completions.png",
}


def is_image(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3 and shape[0] in (1, 3, 4)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.png.tmp")
    try:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def image_grid(
    images: Tensor, ncol: int, pad: int = 1, value_range: tuple[float, float] = (0, 1)
) -> np.ndarray:
    """Tile ``[N, C, H, W]`` images into one ``[rows*(H+pad), ncol*(W+pad), C]`` array in [0, 1]."""
    lo, hi = value_range
    x = ((images.detach().float().cpu() - lo) / max(hi - lo, 1e-12)).clamp(0, 1)
    n, c, h, w = x.shape
    rows = math.ceil(n / ncol)
    out = np.ones((rows * (h + pad) + pad, ncol * (w + pad) + pad, c), dtype=np.float32)
    for i in range(n):
        r, k = divmod(i, ncol)
        out[
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + k * (w + pad) : pad + k * (w + pad) + w,
        ] = x[i].permute(1, 2, 0).numpy()
    return out


def _show(ax: plt.Axes, arr: np.ndarray) -> None:
    if arr.shape[-1] == 1:
        ax.imshow(arr[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(arr[..., :3], interpolation="nearest")
    ax.set_axis_off()


def _examples_figure(
    x: Tensor, ncol: int, title: str, value_range: tuple[float, float]
) -> plt.Figure:
    """Images as a grid, 2-D points as a scatter, other vectors as heat-map rows."""
    shape = tuple(x.shape[1:])
    if is_image(shape):
        arr = image_grid(x, ncol, value_range=value_range)
        # Blow small images up (nearest neighbour) so an 8x8 digit is still legible.
        scale = min(8.0, max(1.0, 700 / max(arr.shape[:2])))
        fig, ax = plt.subplots(
            figsize=(arr.shape[1] * scale / 100, arr.shape[0] * scale / 100 + 0.4)
        )
        _show(ax, arr)
    else:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.imshow(x.reshape(len(x), -1).cpu().numpy(), aspect="auto", cmap="viridis")
        ax.set_xlabel("dimension")
        ax.set_ylabel("example")
    ax.set_title(title)
    return fig


def plot_samples(
    samples: Tensor,
    path: str | Path,
    value_range: tuple[float, float] = (0, 1),
    title: str = "samples from the prior",
) -> Path:
    """A grid of generated examples ``[N, *shape]`` (a scatter for 2-D points)."""
    if tuple(samples.shape[1:]) == (2,):
        fig, ax = plt.subplots(figsize=(5, 5))
        pts = samples.detach().cpu().numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.6)
        ax.set_aspect("equal")
        ax.set_title(title)
        return _save(fig, path)
    ncol = max(1, int(math.ceil(math.sqrt(len(samples)))))
    return _save(_examples_figure(samples, ncol, title, value_range), path)


def plot_reconstructions(
    x: Tensor,
    x_hat: Tensor,
    path: str | Path,
    value_range: tuple[float, float] = (0, 1),
    ncol: int = 8,
) -> Path:
    """Originals (odd rows) above their reconstructions (even rows)."""
    rows = []
    for i in range(0, len(x), ncol):
        rows += [x[i : i + ncol], x_hat[i : i + ncol]]
    rows = [
        torch.cat([r, torch.full_like(x[: ncol - len(r)], float("nan"))]) if len(r) < ncol else r
        for r in rows
    ]
    stacked = torch.cat(rows).nan_to_num(value_range[1])
    fig = _examples_figure(
        stacked, ncol, "originals (above) and reconstructions (below)", value_range
    )
    return _save(fig, path)


def check_walkable(model: nn.Module, spherical: bool) -> None:
    """Interpolation needs a latent with a vector space; slerp a standard-normal prior."""
    latent = model.latent
    if latent.kind == "codes":
        raise ConfigError(
            "this model's latents are discrete codes, which have no straight line between "
            "them; interpolation needs a continuous or categorical latent"
        )
    if spherical and not latent.standard_normal:
        raise ConfigError(
            "spherical interpolation follows the shell of a standard-normal prior; this "
            "model's prior is not N(0, I): drop --slerp"
        )


@torch.no_grad()
def interpolation_latents(
    model: nn.Module, x: Tensor, steps: int, spherical: bool, y: Tensor | None = None
) -> Tensor:
    """Paths between the posterior points of consecutive pairs of ``x``: ``[pairs, steps, *z]``.

    ``y`` are the labels of ``x`` (the context of a conditional model).
    """
    check_walkable(model, spherical)
    z = model.posterior(x, model.context(x, y)).point()
    shape = z.shape[1:]
    flat = z.reshape(len(z), -1)
    walk = slerp if spherical else lerp
    paths = [walk(flat[i], flat[i + 1], steps) for i in range(0, len(flat) - 1, 2)]
    return torch.stack(paths).reshape(len(paths), steps, *shape)


def plot_interpolation(
    model: nn.Module,
    x: Tensor,
    path: str | Path,
    steps: int = 10,
    spherical: bool = False,
    value_range: tuple[float, float] = (0, 1),
    y: Tensor | None = None,
) -> Path:
    """Each row decodes a straight (or spherical) path between two examples' latent means
    (a conditional model decodes each row in the context of its first example)."""
    z = interpolation_latents(model, x, steps, spherical, y)
    c = model.context(x, y)
    if c is not None:
        c = c[0::2][: len(z)].repeat_interleave(steps, dim=0)  # [pairs * steps, ...]
    decoded = model.generate(z.flatten(0, 1), c)
    kind = "spherical" if spherical else "linear"
    fig = _examples_figure(decoded, steps, f"{kind} interpolation in latent space", value_range)
    return _save(fig, path)


def plot_manifold(
    model: nn.Module, path: str | Path, grid: int = 20, value_range: tuple[float, float] = (0, 1)
) -> Path:
    """Decode z = Phi^-1(u) over a uniform grid of u in (0, 1)^2 (2-D standard-normal latents)."""
    if model.conditional:
        raise ConfigError(
            "the manifold figure decodes z alone, but this model also needs its context (a "
            "label or an observed part); see `aevb classes` or `aevb complete`"
        )
    if not has_manifold(model):
        raise ConfigError(
            "the manifold figure needs a 2-D latent with a N(0, I) prior; this model's latent is "
            f"{model.latent.kind} of shape {model.latent.shape}"
            + (" (train with --latent-dim 2)" if model.latent.kind == "continuous" else "")
        )
    device = next(model.parameters()).device
    z = manifold_grid(grid).to(device)
    decoded = model.generate(z)
    shape = tuple(decoded.shape[1:])
    if is_image(shape):
        fig = _examples_figure(
            decoded, grid, "learned manifold: decoded z = Phi^-1(u), u on a grid", value_range
        )
    else:
        fig, ax = plt.subplots(figsize=(5, 5))
        pts = decoded.reshape(grid, grid, -1)[..., :2].cpu().numpy()
        for i in range(grid):
            ax.plot(pts[i, :, 0], pts[i, :, 1], "-", color="tab:blue", lw=0.6)
            ax.plot(pts[:, i, 0], pts[:, i, 1], "-", color="tab:orange", lw=0.6)
        ax.set_title("decoded latent grid (mean of p(x|z))")
        ax.set_aspect("equal")
    return _save(fig, path)


def has_manifold(model: nn.Module) -> bool:
    latent = model.latent
    two_d = latent.kind == "continuous" and latent.shape == (2,) and latent.standard_normal
    return two_d and not model.conditional


@torch.no_grad()
def class_rows(
    model: nn.Module, n: int = 8, seed: int = 0, temperature: float = 1.0, mean: bool = True
) -> tuple[Tensor, Tensor]:
    """One row per class, the columns sharing their latents: style held, class varied.

    Every row draws its n latents from p(z | y = class) with the *same* generator state
    (seed), so under a N(0, I) prior the n latents are identical across rows, and under a
    learned conditional prior p(z|y) = N(mu(y), sigma(y)^2) they share their standard
    noise eps (z = mu(y) + sigma(y) eps). Decoding a draw of x (``mean=False``) uses that
    shared generator too.

    Returns:
        ``z`` ``[C, n, *z]`` and the decoded ``x`` ``[C, n, *event]``.
    """
    if model.conditions_on != "labels" or not model.num_classes:
        raise ConfigError(
            "the class figure needs a model conditioned on class labels (--model cvae); this "
            "model is not"
        )
    device = next(model.parameters()).device
    zs, xs = [], []
    for k in range(model.num_classes):
        y = torch.full((n,), k, dtype=torch.int64, device=device)
        g = torch.Generator(device=device).manual_seed(seed)
        z = model.prior(y).sample(n, temperature, g)
        zs.append(z)
        xs.append(model.generate(z, y, mean=mean, generator=g))
    return torch.stack(zs), torch.stack(xs)


def plot_class_rows(
    x: Tensor,
    path: str | Path,
    value_range: tuple[float, float] = (0, 1),
    class_names: list | None = None,
) -> Path:
    """Draw :func:`class_rows`' ``[C, n, *event]`` grid: row k is class k."""
    c, n = x.shape[:2]
    names = ", ".join(str(v) for v in (class_names or range(c)))
    title = f"one row per class ({names}); each column shares its z"
    if len(title) > 90:
        title = f"one row per class (0..{c - 1}); each column shares its z"
    return _save(_examples_figure(x.flatten(0, 1), n, title, value_range), path)


def _rgb(t: Tensor) -> Tensor:
    """``[..., C, H, W]`` as 3 channels (grey repeated; alpha dropped)."""
    return t.expand(*t.shape[:-3], 3, *t.shape[-2:]) if t.shape[-3] == 1 else t[..., :3, :, :]


def plot_completions(
    observed: Tensor,
    missing: Tensor,
    completions: Tensor,
    path: str | Path,
    value_range: tuple[float, float] = (0, 1),
) -> Path:
    """Row i: the observed part of image i (the missing part tinted blue), then its completions.

    Args:
        observed: ``[B, C, H, W]`` the inputs (only their observed part is shown).
        missing: ``[C, H, W]`` 0/1, 1 where the model fills in.
        completions: ``[n, B, C, H, W]``.
    """
    n, b = completions.shape[:2]
    lo, hi = value_range
    tint = torch.tensor([0.35, 0.55, 0.95]).view(3, 1, 1) * (hi - lo) + lo
    hole = (missing.amax(dim=0, keepdim=True) > 0).cpu()
    obs = torch.where(hole, tint, _rgb(observed.detach().float().cpu()))
    rows = torch.cat(
        [obs.unsqueeze(1), _rgb(completions.detach().float().cpu()).transpose(0, 1)], 1
    )
    fig = _examples_figure(
        rows.flatten(0, 1),
        n + 1,
        "observed part (missing in blue), then sampled completions",
        value_range,
    )
    return _save(fig, path)


def plot_latents(mu: Tensor, labels: Tensor | None, path: str | Path) -> Path:
    """Posterior summaries coloured by label: directly for 2-D latents, else the first two PCs."""
    m = mu.detach().cpu().numpy()
    if m.shape[1] == 2:
        pts, xl, yl, title = m, "z1", "z2", "posterior summaries (means)"
    elif m.shape[1] == 1:
        pts = np.stack([m[:, 0], np.zeros(len(m))], axis=1)
        xl, yl, title = "z1", "", "posterior summaries (1-D latent)"
    else:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2).fit(m)
        pts = pca.transform(m)
        ev = pca.explained_variance_ratio_
        xl, yl = f"PC1 ({ev[0]:.0%} of variance)", f"PC2 ({ev[1]:.0%})"
        title = f"posterior summaries, first two principal components of {m.shape[1]} dimensions"
    fig, ax = plt.subplots(figsize=(6, 5))
    if labels is not None:
        lab = labels.cpu().numpy()
        sc = ax.scatter(pts[:, 0], pts[:, 1], c=lab, cmap="tab10", s=6, alpha=0.8)
        fig.colorbar(sc, ax=ax, label="label")
    else:
        ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.6)
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.set_title(title)
    return _save(fig, path)


def plot_curves(metrics: list[dict], path: str | Path) -> Path:
    """neg-ELBO, reconstruction NLL and KL (nats per example) against step, train and valid.

    Valid points are per epoch, so overfitting shows as the valid curve turning up while
    the train curve keeps falling. On long runs the y axis leaves out the first few epochs'
    transient (everything above the 95th percentile), so that the gap stays visible.
    """
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    names = [
        ("neg_elbo", "neg-ELBO"),
        ("recon_nll", "reconstruction NLL (distortion)"),
        ("kl", "KL (rate)"),
    ]
    steps = [r["step"] for r in metrics]
    for ax, (key, label) in zip(axes, names, strict=True):
        shown: list[float] = []
        for split, style in (("train", "-"), ("valid", "--")):
            vals = [_num(r.get(f"{split}_{key}")) for r in metrics]
            shown += vals
            ax.plot(steps, vals, style, marker="." if len(steps) < 30 else None, label=split)
        limits = robust_ylim(shown) if len(steps) >= 30 else None
        if limits is not None:
            ax.set_ylim(*limits)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.set_ylabel("nats per example")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def robust_ylim(values: list[float], upper_percentile: float = 95.0) -> tuple[float, float] | None:
    """y limits from the smallest finite value to the ``upper_percentile``-th, padded by 5%:
    the transient of the first epochs is left out, the rest of a curve is shown. None when
    no value is finite."""
    finite = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if finite.size == 0:
        return None
    lo, hi = float(finite.min()), float(np.percentile(finite, upper_percentile))
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    return lo - pad, hi + pad


def _num(v: object) -> float:
    return float(v) if isinstance(v, (int, float)) else float("nan")


def plot_2d_data_vs_samples(data: Tensor, samples: Tensor, path: str | Path) -> Path:
    """Scatter of 2-D data beside samples of the model p(x) = int p(x|z) p(z) dz."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 5), sharex=True, sharey=True)
    for ax, pts, title in ((axes[0], data, "data"), (axes[1], samples, "model samples")):
        p = pts.detach().cpu().numpy()
        ax.scatter(p[:, 0], p[:, 1], s=3, alpha=0.5)
        ax.set_title(title)
        ax.set_aspect("equal")
    return _save(fig, path)


def plot_chart(chart: Chart, path: str | Path) -> Path:
    """A picture a model asked for (:meth:`~aevb.models.base.LatentVariableModel.charts`):
    bars of ``values`` ``[K]``, or a heat map of ``values`` ``[R, C]`` with a colour bar."""
    values = chart.values.detach().float().cpu().numpy()
    if chart.kind == "bars":
        fig, ax = plt.subplots(figsize=(max(6.0, min(14.0, len(values) / 40)), 3.6))
        ax.bar(np.arange(len(values)), values, width=1.0, color="tab:blue")
        ax.set_xlim(-0.5, len(values) - 0.5)
    else:
        rows, cols = values.shape
        fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * cols + 2), max(3.0, 0.25 * rows + 1.5)))
        im = ax.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax)
        if cols <= 32:
            ax.set_xticks(range(cols))
        if rows <= 32:
            ax.set_yticks(range(rows))
    ax.set_title(textwrap.fill(chart.title, 70), fontsize=9)
    ax.set_xlabel(chart.xlabel)
    ax.set_ylabel(chart.ylabel)
    return _save(fig, path)


def _to(t: Tensor | None, device: torch.device) -> Tensor | None:
    return None if t is None else t.to(device)


def draw_run_figures(
    run_dir: str | Path, model: nn.Module, dataset: DataSource, seed: int = 0
) -> list[Path]:
    """The figures ``aevb train`` leaves in ``RUN/figures``; returns their paths.

    Beside the standard set, each of the model's :meth:`charts` (from the first 1,000
    test examples) becomes ``RUN/figures/<name>.png``.
    """
    out = Path(run_dir) / ckpt.FIGURES_DIR
    names = FIGURE_NAMES
    shape = tuple(dataset.info.shape)
    vr = dataset.info.value_range
    device = next(model.parameters()).device
    paths = []
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        paths.append(plot_curves(ckpt.read_metrics(run_dir), out / names["curves"]))
        if shape == (2,):
            test = dataset.head("test", 2000)
            samples = model.sample(len(test), mean=False)
            paths.append(plot_2d_data_vs_samples(test, samples, out / names["samples"]))
        else:
            x = dataset.head("test", 16).to(device)
            y = _to(dataset.head_labels("test", 16), device)
            if model.conditions_on == "observed":  # no samples without an observed part
                done = model.complete(x[:8], 8)
                path = out / names["completions"]
                paths.append(plot_completions(x[:8], model.scored_mask, done, path, vr))
            else:
                title = f"samples from {model.prior().description}"
                paths.append(plot_samples(model.sample(64), out / names["samples"], vr, title))
            if model.conditions_on == "labels":
                _, grid = class_rows(model, 8, seed)
                classes = dataset.info.transform.get("classes")
                paths.append(plot_class_rows(grid, out / names["classes"], vr, classes))
            recon = model.reconstruct(x, y)
            paths.append(plot_reconstructions(x, recon, out / names["reconstructions"], vr))
            if model.latent.kind != "codes":
                path = out / names["interpolation"]
                y10 = None if y is None else y[:10]
                paths.append(plot_interpolation(model, x[:10], path, value_range=vr, y=y10))
        emb = torch.cat(
            [
                model.embed(x.to(device), _to(y, device))
                for x, y in dataset.eval_batches("test", 1000)
            ]
        )
        paths.append(plot_latents(emb, dataset.labels("test"), out / names["latents"]))
        if has_manifold(model):
            paths.append(plot_manifold(model, out / names["manifold"], 20, vr))
        x, y = dataset.head("test", 1000).to(device), dataset.head_labels("test", 1000)
        y = y.to(device) if y is not None else None
        paths.append(plot_traversal(model, x, out / names["traversals"], y, value_range=vr))
        for name, chart in model.charts(x, y).items():
            paths.append(plot_chart(chart, out / f"{name}.png"))
    return paths


def examples_figure(
    x: Tensor, value_range: tuple[float, float] = (0, 1), title: str = ""
) -> plt.Figure:
    """A figure (not saved) of examples ``[N, *shape]``: a grid, a scatter of 2-D points, or
    heat-map rows (for TensorBoard's ``add_figure``)."""
    if tuple(x.shape[1:]) == (2,):
        fig, ax = plt.subplots(figsize=(5, 5))
        pts = x.detach().float().cpu().numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.6)
        ax.set_aspect("equal")
        ax.set_title(title)
        return fig
    return _examples_figure(x, max(1, int(math.ceil(math.sqrt(len(x))))), title, value_range)


# --- posterior diagnostics (aevb.diagnostics) ----------------------------------------------
def plot_traversal(
    model: nn.Module,
    x: Tensor,
    path: str | Path,
    y: Tensor | None = None,
    *,
    example: int | None = 0,
    rows: int = 10,
    steps: int = 9,
    value_range: tuple[float, float] = (0, 1),
) -> Path:
    """Latent traversals: each row decodes ``x[example]``'s posterior point (or the prior's
    origin) with one latent unit swept, every other unit held fixed
    (:func:`aevb.diagnostics.traversal` says which units and values)."""
    from .diagnostics import traversal

    c = model.context(x, y)  # labels, or the observed part of each example
    t = traversal(model, x, c, example=example, rows=rows, steps=steps)
    r, s = t.values.shape
    context = None
    if c is not None:  # decode with the example's context (the first example's at the origin)
        i = example if example is not None else 0
        context = c[i : i + 1].expand(r * s, *c.shape[1:])
    decoded = model.generate(t.z.flatten(0, 1), context)
    start = f"example {example}'s posterior point" if example is not None else "the prior's origin"
    what = {"continuous": "prior quantiles", "categorical": "classes", "codes": "codes"}.get(
        model.latent.kind, "values"
    )
    title = f"traversals from {start}: one unit per row over its {what}, the rest fixed"
    return _save(traversal_figure(decoded, t.row_labels, t.column_labels, title, value_range), path)


def traversal_figure(
    decoded: Tensor,
    row_labels: list[str],
    column_labels: list[str],
    title: str,
    value_range: tuple[float, float] = (0, 1),
) -> plt.Figure:
    """Decoded traversals ``[R * S, *shape]`` as R labelled rows of S columns."""
    r, s = len(row_labels), len(column_labels)
    shape = tuple(decoded.shape[1:])
    if is_image(shape):
        pad = 1
        h, w = shape[-2:]
        arr = image_grid(decoded, s, pad, value_range)
        scale = min(6.0, max(1.5, 500 / max(arr.shape[:2])))
        fig, ax = plt.subplots(
            figsize=(arr.shape[1] * scale / 100 + 1.6, arr.shape[0] * scale / 100 + 0.8)
        )
        if arr.shape[-1] == 1:
            ax.imshow(arr[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(arr[..., :3], interpolation="nearest")
        ax.set_yticks([pad + i * (h + pad) + h / 2 - 0.5 for i in range(r)], row_labels)
        ax.set_xticks([pad + j * (w + pad) + w / 2 - 0.5 for j in range(s)], column_labels)
        ax.tick_params(length=0, labelsize=7)
        ax.tick_params(axis="x", labelrotation=90)
        for spine in ax.spines.values():
            spine.set_visible(False)
    else:
        flat = decoded.reshape(r * s, -1).detach().float().cpu().numpy()
        fig, ax = plt.subplots(figsize=(7, min(12, 0.12 * r * s + 1.2)))
        im = ax.imshow(flat, aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax, label="decoded value")
        ax.set_yticks([i * s + (s - 1) / 2 for i in range(r)], row_labels)
        for i in range(1, r):
            ax.axhline(i * s - 0.5, color="white", lw=1)
        ax.set_xlabel(
            f"data dimension (each row: {s} steps, {column_labels[0]} to {column_labels[-1]})"
        )
        ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    return fig


def plot_posterior_vs_prior(
    z_q: Tensor,
    z_p: Tensor,
    latent,
    path: str | Path,
    diagnostics: dict,
    order: list[int] | None = None,
    panels: int = 16,
) -> Path:
    """The aggregate posterior q(z) against the prior p(z), from draws of each.

    Continuous latents: a histogram per latent dimension of q(z)'s draws ``z_q`` with the
    prior's marginal over it (the N(0, 1) density, or a histogram of ``z_p``), for the first
    ``panels`` dimensions of ``order``. Categorical: class usage per variable, q against p.
    Codes: code usage pooled over positions, most used first.
    """
    from .diagnostics import class_usage, unit_name

    d = diagnostics
    head = (
        f"aggregate posterior q(z) against the prior p(z): KL(q(z) || p(z)) = "
        f"{d['aggregate_kl']:.3f} nats, I(n; z) = {d['mutual_information']:.3f} nats "
        f"(at most log N = {d['mi_bound']:.3f}), {d['samples']} draws"
    )
    if latent.kind == "codes":
        q_use = class_usage(z_q, latent).mean(0).numpy()
        p_use = class_usage(z_p, latent).mean(0).numpy()
        rank = np.argsort(-q_use, kind="stable")[: max(panels * 4, 64)]
        fig, ax = plt.subplots(figsize=(10, 3.6))
        ax.bar(np.arange(len(rank)), q_use[rank], color="tab:blue", label="q(z)")
        ax.step(np.arange(len(rank)), p_use[rank], where="mid", color="tab:orange", label="p(z)")
        ax.set_xticks(np.arange(len(rank)), [str(k) for k in rank], fontsize=6, rotation=90)
        ax.set_xlabel("code (most used under q first)")
        ax.set_ylabel("usage, pooled over positions")
        ax.legend()
        ax.set_title(head, fontsize=9)
        fig.tight_layout()
        return _save(fig, path)
    if latent.kind == "categorical":
        q_use = class_usage(z_q, latent).numpy()
        p_use = class_usage(z_p, latent).numpy()
        units = (order or list(range(len(q_use))))[:panels]
    else:
        zq = z_q.reshape(len(z_q), -1).double().cpu().numpy()
        zp = z_p.reshape(len(z_p), -1).double().cpu().numpy()
        units = (order or list(range(zq.shape[1])))[:panels]
    ncol = min(4, len(units))
    nrow = math.ceil(len(units) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.4 * nrow + 0.6), squeeze=False)
    for ax in axes.flat[len(units) :]:
        ax.set_visible(False)
    for ax, u in zip(axes.flat, units, strict=False):
        if latent.kind == "categorical":
            c = np.arange(q_use.shape[1])
            ax.bar(c, q_use[u], color="tab:blue", label="q(z)")
            ax.step(c, p_use[u], where="mid", color="tab:orange", label="p(z)")
            ax.set_xlabel("class")
        else:
            lo, hi = np.percentile(np.concatenate([zq[:, u], zp[:, u]]), [0.5, 99.5])
            lo, hi = min(lo, -3.0), max(hi, 3.0)
            bins = np.linspace(lo, hi, 41)
            ax.hist(zq[:, u], bins=bins, density=True, color="tab:blue", alpha=0.7, label="q(z)")
            if latent.standard_normal:
                grid = np.linspace(lo, hi, 200)
                ax.plot(
                    grid,
                    np.exp(-0.5 * grid**2) / math.sqrt(2 * math.pi),
                    color="tab:orange",
                    label="N(0, 1)",
                )
            else:
                ax.hist(
                    zp[:, u],
                    bins=bins,
                    density=True,
                    histtype="step",
                    color="tab:orange",
                    label="p(z)",
                )
        ax.set_title(unit_name(latent, u), fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(head, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)

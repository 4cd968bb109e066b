"""The explorer's model side: a run's model and data behind the latent-space explorer.

Everything here talks to the model through the interface of
:class:`aevb.models.base.LatentVariableModel` only (``latent``, ``posterior(x).summary()``,
``posterior(x).point()``, ``prior().sample``, ``generate``), so every model kind works:

* **coordinates**: the page edits a latent as a flat list, ``coords`` ``[N, P]``. For a
  ``continuous`` latent P = numel(z) real numbers; for ``categorical`` (z one-hot
  ``[V, C]``) P = V class indices; for ``codes`` (z an index grid) P = numel(z) code
  indices. :meth:`Explorer.to_latent` and :meth:`Explorer.to_coords` convert.
* **the map**: the posterior summaries of a split, shown as they are when 2-D, else as
  their first two principal components. A point of the map becomes a latent through the
  PCA (``mean + components^T (pc1, pc2)``) when the summary *is* z (continuous latents
  whose summary has z's size); otherwise the nearest example's posterior point is used.
* **the context** of a conditional model (``model.conditions_on``): every decode and prior
  draw takes one context, ``[1, ...]``, which :meth:`Explorer.context` resolves from a
  request: a class ``label`` (``"labels"``) or the observed part of example
  ``context_index`` of a split (``"observed"``, a completion model); unconditional models
  take none. The map embeds each example with its own context (``model.context(x, y)``).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import checkpoint as ckpt
from ..data import Dataset
from ..errors import AevbError, CheckpointError, DataError
from ..latent import lerp, slerp
from ..runs import load_run_dataset

# Map points per split (the first examples of the split); more only slow the page.
MAX_MAP_POINTS = 5000
# Examples encoded per forward pass when the map is built.
ENCODE_BATCH = 1000
# What a model conditions on -> the request field that names its context (None: none).
CONTEXTS: dict[str | None, str | None] = {
    None: None,
    "labels": "label",
    "observed": "context_index",
}
CONTEXT_WORDS = {
    "labels": "this model conditions on class labels: give label, a class in [0, {top}]",
    "observed": "this model completes an example from its observed part: give context_index, "
    "the example (of the request's split) whose observed part to keep",
}


class ExplorerError(AevbError):
    """A request the explorer cannot answer; ``status`` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class MapData:
    """The latent map of one split.

    Attributes:
        xy: ``[N, 2]`` map positions (z itself when 2-D, else PC1 and PC2 of the summaries).
        labels: ``[N]`` integer labels, or None.
        contexts: ``[N, ...]`` each example's context (``model.context``), or None.
        axes: the two axis names.
        explained: fraction of the summaries' variance on each axis (PCA), else None.
        mean, components: the PCA (``[S]``, ``[2, S]``), or None when the map is z itself.
        points: ``[N, *z]`` posterior points (what a map click decodes in ``nearest`` mode).
        x: ``[N, *event]`` the examples shown.
        total: examples in the split (``N`` may be fewer).
    """

    xy: Tensor
    labels: Tensor | None
    axes: tuple[str, str]
    explained: tuple[float, float] | None
    mean: Tensor | None
    components: Tensor | None
    points: Tensor
    x: Tensor
    total: int
    contexts: Tensor | None = None


def check_run(run_dir: str | Path) -> None:
    """Raise :class:`CheckpointError` with the fix when ``run_dir`` has no finished model."""
    ckpt.load_config(run_dir)  # missing directory, not a run, corrupt config
    if not (Path(run_dir) / ckpt.MODEL_FILE).is_file():
        raise CheckpointError(
            f"{run_dir} has no {ckpt.MODEL_FILE}: its training has not finished "
            f"(continue it with `aevb train --resume {run_dir}`)"
        )


class Explorer:
    """A loaded run: the model, its data (when it can be loaded) and cached latent maps.

    Args:
        run_dir: a finished run written by ``aevb train``.
        device: where the model runs.
        max_map_points: examples per split on the latent map.

    Example:
        >>> ex = Explorer("runs/digits")  # doctest: +SKIP
        >>> ex.decode(ex.origin().unsqueeze(0)).shape  # doctest: +SKIP
        torch.Size([1, 1, 8, 8])
    """

    def __init__(
        self,
        run_dir: str | Path,
        device: str | torch.device = "cpu",
        max_map_points: int = MAX_MAP_POINTS,
    ):
        check_run(run_dir)
        self.run_dir = Path(run_dir)
        self.model: nn.Module = ckpt.load_model(run_dir, device=device)
        self.conditions_on: str | None = self.model.conditions_on
        if self.conditions_on not in CONTEXTS:
            raise AevbError(
                f"aevb serve gives models a context of {list(CONTEXTS)[1:]}, but {run_dir} "
                f"conditions on {self.conditions_on!r}"
            )
        self.latent = self.model.latent
        self.device = torch.device(device)
        self.config = ckpt.load_config(run_dir)
        self.dataset_info = ckpt.load_dataset_info(run_dir)
        self.event_shape = tuple(self.config.model.input_shape)
        self.max_map_points = max_map_points
        self.data: Dataset | None = None
        self.data_error: str | None = None
        try:
            self.data = load_run_dataset(run_dir)
        except (AevbError, OSError) as e:  # the page still shows prior, sliders and curves
            self.data_error = f"the run's data could not be loaded ({e})"
        if self.conditions_on == "observed" and self.data is None:
            raise AevbError(
                f"{run_dir} completes images from their observed part, which comes from the "
                f"run's data, but {self.data_error}; make the data available where the run "
                "expects it"
            )
        self._maps: dict[str, MapData] = {}
        self._lock = threading.Lock()  # one model call at a time; torch runs it on 1 thread
        self._map_lock = threading.Lock()  # one map built at a time (others wait for it)
        self._slider_range = self._prior_range()

    # --- the context of a conditional model ---------------------------------------------
    def class_names(self) -> list[str] | None:
        """Names of a label-conditioned model's classes: the data's (``transform.classes``)
        where the run recorded them, else ``0 .. C-1``; None for other models."""
        if self.conditions_on != "labels":
            return None
        recorded = list(self.dataset_info.get("transform", {}).get("classes") or [])
        return [str(recorded[k]) if k < len(recorded) else str(k) for k in range(self.num_classes)]

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes or 0)

    def context(
        self, label: int | None = None, split: str = "test", index: int | None = None
    ) -> Tensor | None:
        """The one context ``[1, ...]`` a request names, checked against the model.

        Args:
            label: a class in ``0 .. C-1``: the context of a label-conditioned model.
            split, index: the example whose observed part a completion model keeps.

        Returns:
            None for an unconditional model (which must be given neither).

        Raises:
            ExplorerError: (422) a context missing, out of range, or of the wrong kind.
        """
        on = self.conditions_on
        given = [name for name, v in (("label", label), ("context_index", index)) if v is not None]
        wanted = CONTEXTS[on]
        if on is None and given:
            raise ExplorerError(f"this model is unconditional: drop {' and '.join(given)}")
        if on is None:
            return None
        what = CONTEXT_WORDS[on].format(top=self.num_classes - 1)
        if given != [wanted]:
            wrong = [g for g in given if g != wanted]
            extra = f", not {' or '.join(wrong)}" if wrong else ""
            raise ExplorerError(f"{what}{extra}")
        if label is not None:
            if not 0 <= label < self.num_classes:
                raise ExplorerError(
                    f"label must be a class in [0, {self.num_classes - 1}], got {label}"
                )
            return torch.tensor([label], device=self.device)
        assert index is not None
        return self.example_context(split, index, "context_index")

    def example_context(self, split: str, index: int, name: str = "index") -> Tensor | None:
        """Example ``index``'s own context ``[1, ...]`` (its label, its observed part), or None."""
        m = self.latent_map(split)
        self._check_index(m, split, index, name)
        return None if m.contexts is None else m.contexts[index : index + 1].to(self.device)

    def _expand(self, context: Tensor | None, n: int) -> Tensor | None:
        """One context ``[1, ...]`` -> ``[n, ...]`` (one per decoded point)."""
        return None if context is None else context.expand(n, *context.shape[1:])

    def _marginal_context(self, n: int) -> Tensor | None:
        """``[n, ...]`` contexts whose mixture is the prior's marginal, sum_c p(c) p(z|c): the
        first training examples' (cycled) when the data loaded, else the model's default."""
        if not self.model.conditional:
            return None
        if self.data is None:
            return self.model.default_context(n)
        x = self.data.head("train", n)
        y = self.data.head_labels("train", n)
        c = self.model.context(x.to(self.device), None if y is None else y.to(self.device))
        return c[torch.arange(n, device=c.device) % len(c)]

    # --- latents <-> the page's coordinates ---------------------------------------------
    @property
    def coord_dim(self) -> int:
        """P: numbers per latent on the page."""
        if self.latent.kind == "categorical":
            return self.latent.numel // self.latent.shape[-1]
        return self.latent.numel

    def to_latent(self, coords: Tensor) -> Tensor:
        """``[N, P]`` page coordinates -> ``[N, *z]`` latents the decoder takes."""
        n = coords.shape[0]
        kind = self.latent.kind
        if kind == "continuous":
            return coords.to(self.device, torch.float32).view(n, *self.latent.shape)
        idx = coords.to(self.device, torch.long)
        if kind == "codes":
            return idx.view(n, *self.latent.shape)
        classes = self.latent.shape[-1]
        return nn.functional.one_hot(idx, classes).to(torch.float32).view(n, *self.latent.shape)

    def to_coords(self, z: Tensor) -> Tensor:
        """``[N, *z]`` latents -> ``[N, P]`` page coordinates (argmax of a one-hot or relaxed z)."""
        n = z.shape[0]
        if self.latent.kind == "categorical":
            return z.reshape(n, self.coord_dim, self.latent.shape[-1]).argmax(-1)
        return z.reshape(n, -1)

    def origin(self, context: Tensor | None = None) -> Tensor:
        """``[P]``: the prior's origin (0 under N(0, I); else the prior's mean or mode): of
        p(z|c) for one context ``[1, ...]``, else of the prior's marginal over the contexts."""
        if self.latent.kind == "continuous" and self.latent.standard_normal:
            return torch.zeros(self.coord_dim)
        coords = self._prior_coords(512, context)
        if self.latent.kind == "continuous":
            return coords.mean(0)
        return coords.mode(0).values

    def slider_range(self) -> tuple[list[float], list[float]]:
        """Per coordinate (low, high): the prior's 0.1% and 99.9% quantiles, widened by 10%."""
        return self._slider_range

    def _prior_coords(self, n: int, context: Tensor | None = None) -> Tensor:
        y = self._marginal_context(n) if context is None else self._expand(context, n)
        gen = torch.Generator(device=self.device).manual_seed(0)
        with self._lock, torch.no_grad():
            z = self.model.prior(y).sample(n, 1.0, gen)
        return self.to_coords(z).cpu()

    def _prior_range(self) -> tuple[list[float], list[float]]:
        if self.latent.kind != "continuous":
            top = float((self.latent.classes or 1) - 1)
            return [0.0] * self.coord_dim, [top] * self.coord_dim
        coords = self._prior_coords(2000).double()
        lo, hi = coords.quantile(0.001, dim=0), coords.quantile(0.999, dim=0)
        pad = 0.1 * (hi - lo).clamp_min(1e-3)
        return (lo - pad).tolist(), (hi + pad).tolist()

    # --- the model's three uses ---------------------------------------------------------
    def decode(self, coords: Tensor, context: Tensor | None = None) -> Tensor:
        """``[N, P]`` coordinates -> ``[N, *event]`` data means E[x|z, c] on the CPU, all
        with the one context ``c`` ``[1, ...]`` (:meth:`context`; None when unconditional)."""
        z = self.to_latent(coords)
        y = self._expand(context, len(z))
        with self._lock, torch.no_grad():
            return self.model.generate(z, y, mean=True).float().cpu()

    def prior_samples(
        self, n: int, temperature: float, seed: int, context: Tensor | None = None
    ) -> Tensor:
        """``[n, P]`` coordinates of draws of p(z) (p(z|c) for one context ``[1, ...]``) at
        ``temperature``."""
        y = self._expand(context, n)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        with self._lock, torch.no_grad():
            z = self.model.prior(y).sample(n, temperature, gen)
        return self.to_coords(z).cpu()

    def interpolate(self, a: Tensor, b: Tensor, steps: int, method: str) -> Tensor:
        """``[steps, P]`` coordinates from ``a`` to ``b`` ``[P]`` (endpoints included).

        ``linear`` and ``spherical`` (slerp, for N(0, I) priors) for continuous latents;
        ``discrete`` switches the positions of a discrete latent from A's value to B's in
        order, so step t holds round(t * P / (steps - 1)) of B's positions.
        """
        if method == "linear":
            return lerp(a.float(), b.float(), steps)
        if method == "spherical":
            return slerp(a.float(), b.float(), steps)
        switched = torch.linspace(0, a.numel(), steps).round().long()
        pos = torch.arange(a.numel())
        return torch.stack([torch.where(pos < k, b, a) for k in switched])

    def interpolation_methods(self) -> list[str]:
        if self.latent.kind != "continuous":
            return ["discrete"]
        return ["linear", "spherical"] if self.latent.standard_normal else ["linear"]

    # --- data and the latent map --------------------------------------------------------
    def splits(self) -> dict[str, int]:
        """``{split: examples}`` of the run's data ({} when it could not be loaded)."""
        if self.data is None:
            return {}
        return {s: self.data.size(s) for s in ("train", "valid", "test")}

    def latent_map(self, split: str) -> MapData:
        """The (cached) latent map of ``split``."""
        if self.data is None:
            raise ExplorerError(self.data_error or "this run has no data", 409)
        if split not in ("train", "valid", "test"):
            raise ExplorerError(f"unknown split {split!r}; choose one of train, valid, test", 404)
        with self._map_lock:
            if split not in self._maps:
                self._maps[split] = self._build_map(split)
        return self._maps[split]

    def example(self, split: str, index: int) -> tuple[Tensor, Tensor]:
        """An example of the map ``[*event]`` and its posterior point as coordinates ``[P]``."""
        m = self.latent_map(split)
        self._check_index(m, split, index)
        return m.x[index], self.to_coords(m.points[index : index + 1])[0]

    @staticmethod
    def _check_index(m: MapData, split: str, index: int, name: str = "index") -> None:
        if not 0 <= index < len(m.x):
            raise ExplorerError(f"{name} must be in [0, {len(m.x)}) for split {split}, got {index}")

    def map_to_coords(self, split: str, xy: Tensor) -> tuple[Tensor, Tensor]:
        """Map positions ``[N, 2]`` -> (coordinates ``[N, P]``, nearest example ``[N]``).

        Continuous latents whose summary is z go back through the PCA (or are z when 2-D);
        any other latent takes the posterior point of the nearest example on the map.
        """
        m = self.latent_map(split)
        nearest = torch.cdist(xy.double(), m.xy.double()).argmin(1)
        if self.map_mode() == "nearest":
            return self.to_coords(m.points[nearest]), nearest
        if m.components is None:
            coords = xy[:, : self.coord_dim]
        else:
            k = m.components.shape[0]
            coords = m.mean + xy[:, :k].to(m.mean.dtype) @ m.components
        return coords.float(), nearest

    def map_mode(self) -> str:
        """``inverse`` (a map point is a latent, through the PCA) or ``nearest``."""
        summary_is_z = self.latent.summary_dim == self.latent.numel
        return "inverse" if self.latent.kind == "continuous" and summary_is_z else "nearest"

    def _build_map(self, split: str) -> MapData:
        assert self.data is not None
        total = self.data.size(split)
        x = self.data.head(split, self.max_map_points).float().cpu()
        labels = self.data.labels(split)
        labels = labels[: len(x)].long().cpu() if labels is not None else None
        summaries, points, contexts = [], [], []
        with self._lock, torch.no_grad():
            for i in range(0, len(x), ENCODE_BATCH):
                batch = x[i : i + ENCODE_BATCH].to(self.device)
                y = None if labels is None else labels[i : i + ENCODE_BATCH].to(self.device)
                try:  # each example with its own context (its label, its observed part)
                    c = self.model.context(batch, y)
                except AevbError as e:
                    raise ExplorerError(f"the {split} split gives no context: {e}", 409) from None
                q = self.model.posterior(batch, c)
                summaries.append(q.summary().float().cpu())
                points.append(q.point().cpu())
                if self.model.conditional:
                    contexts.append(c.cpu())
        s, pts = torch.cat(summaries), torch.cat(points)
        ctx = torch.cat(contexts) if contexts else None
        if s.shape[1] <= 2 and self.map_mode() == "inverse":
            xy = s if s.shape[1] == 2 else torch.cat([s, torch.zeros_like(s)], 1)
            axes = ("z1", "z2") if s.shape[1] == 2 else ("z1", "")
            return MapData(xy, labels, axes, None, None, None, pts, x, total, ctx)
        mean, components, explained = pca(s.double(), 2)
        xy = (s.double() - mean) @ components.T
        if xy.shape[1] < 2:
            xy = torch.cat([xy, torch.zeros_like(xy)], 1)
            explained = (*explained, 0.0)
        return MapData(
            xy.float(), labels, ("PC1", "PC2"), explained, mean, components, pts, x, total, ctx
        )


def pca(s: Tensor, k: int) -> tuple[Tensor, Tensor, tuple[float, ...]]:
    """The first ``k`` principal components of rows ``s`` ``[N, S]``, by an exact SVD.

    Returns:
        ``mean`` ``[S]``, ``components`` ``[k', S]`` (orthonormal rows, k' = min(k, S, N),
        each signed so its largest loading is positive) and each one's variance fraction.
    """
    if len(s) < 2:
        raise DataError("the latent map needs at least 2 examples")
    mean = s.mean(0)
    _, sv, vt = torch.linalg.svd(s - mean, full_matrices=False)
    k = min(k, vt.shape[0])
    comps = vt[:k]
    sign = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    comps = comps * torch.where(sign == 0, 1.0, sign).to(comps.dtype)
    var = sv.pow(2)
    total = float(var.sum()) or 1.0
    return mean, comps, tuple(float(v) / total for v in var[:k])


def finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None

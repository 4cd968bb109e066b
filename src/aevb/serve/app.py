"""The explorer's web server: a Starlette app over :class:`~aevb.serve.explorer.Explorer`.

All model work happens here, through the Python API, in batches; the page only draws.
Endpoints (JSON in and out; every error is ``{"error": "..."}`` with a 4xx status):

==========  =================  ===========================================================
method      path               request -> response
==========  =================  ===========================================================
GET         /                  the page (``static/index.html``)
GET         /api/info          -> run, latent description, coordinate ranges, splits, limits
GET         /api/summary       -> metrics.jsonl curves, the last record, evaluation files
GET         /api/map           ``?split=test`` -> map positions, labels, axes, PCA (if any)
GET         /api/example       ``?split=test&index=3`` -> ``{"coords", "example", "decoded",
                               "label"}`` (decoded with the example's own context)
POST        /api/decode        ``{"coords": [[...P numbers], ...], "format": "raw"|"png"}``
                               -> ``{"images": ...}`` (at most 1,024 points)
POST        /api/map/decode    ``{"split", "points": [[x, y], ...], "format"}``
                               -> ``{"coords", "nearest", "images"}``
POST        /api/interpolate   ``{"split", "a", "b", "steps", "method", "format"}``
                               -> ``{"coords", "images"}``
POST        /api/prior         ``{"n", "temperature", "seed", "format"}`` -> ``{"coords", "images"}``
POST        /api/origin        ``{"format"}`` -> ``{"coords", "images"}``: the prior's origin
==========  =================  ===========================================================

Conditional models (``/api/info``'s ``conditions_on``) need one context in every POST: a
class ``"label"`` (``"labels"``: 0 .. C-1, named in ``classes``), or ``"context_index"``,
the example of ``"split"`` (default test) whose observed part a completion model keeps
(``"observed"``; ``observed_mask`` marks those pixels). Each decoded point and prior draw
takes it; the map embeds every example with its own. A context that is missing, out of
range, or given to a model that does not take it is a 422.

``images`` is ``{"format": "raw", "n", "height", "width", "channels", "data": base64 of
uint8 [n, height, width, channels]}``, or ``{"format": "png", "n", "png": [data URLs]}``,
or for vector data ``{"format": "vector", "n", "values": [[...]], "value_range"}``.
"""

from __future__ import annotations

import base64
import io
import json
import math
import socket
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from torch import Tensor

from .. import checkpoint as ckpt
from ..figures import is_image
from .explorer import Explorer, ExplorerError, finite_or_none

MAX_POINTS = 1024  # latents decoded by one request
MAX_STEPS = 64  # points on one interpolation path
MAX_BODY_BYTES = 16 * 2**20
FORMATS = ("raw", "png")
STATIC = resources.files("aevb.serve") / "static"

Body = dict[str, Any]


# --- reading requests -----------------------------------------------------------------
async def read_body(request: Request) -> Body:
    """The JSON object of a POST body; 400 for anything else, 413 above MAX_BODY_BYTES."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
        raise ExplorerError(f"request body over {MAX_BODY_BYTES} bytes", 413)
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ExplorerError(f"request body over {MAX_BODY_BYTES} bytes", 413)
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExplorerError(f"malformed JSON: {e}", 400) from None
    if not isinstance(body, dict):
        raise ExplorerError("the request body must be a JSON object", 400)
    return body


def get_int(body: Body, key: str, default: int | None, lo: int, hi: int) -> int:
    """``body[key]`` as an int in [lo, hi] (422 otherwise)."""
    v = body.get(key, default)
    if isinstance(v, str) and v.lstrip("-").isdigit():  # query strings
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ExplorerError(f"{key} must be an integer, got {v!r}")
    if not lo <= v <= hi:
        raise ExplorerError(f"{key} must be in [{lo}, {hi}], got {v}", 413 if v > hi else 422)
    return v


def get_float(body: Body, key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key, default)
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        raise ExplorerError(f"{key} must be a finite number, got {v!r}")
    if not lo <= v <= hi:
        raise ExplorerError(f"{key} must be in [{lo}, {hi}], got {v}")
    return float(v)


def get_choice(body: Body, key: str, default: str, choices: list[str] | tuple[str, ...]) -> str:
    v = body.get(key, default)
    if v not in choices:
        raise ExplorerError(f"{key} must be one of {list(choices)}, got {v!r}")
    return v


def get_points(body: Body, key: str, width: int, integer: bool = False, top: int = 0) -> Tensor:
    """``body[key]``: a list of 1..MAX_POINTS points of ``width`` finite numbers -> ``[N, width]``.

    With ``integer``, each number must be a whole number in [0, top).
    """
    v = body.get(key)
    if not isinstance(v, list) or not v:
        raise ExplorerError(
            f"{key} must be a non-empty list of points, each a list of {width} numbers"
        )
    if len(v) > MAX_POINTS:
        raise ExplorerError(f"{len(v)} points in {key}; at most {MAX_POINTS} per request", 413)
    for i, p in enumerate(v):
        if not isinstance(p, list) or len(p) != width:
            got = f"{len(p)} numbers" if isinstance(p, list) else repr(p)[:40]
            raise ExplorerError(f"{key}[{i}] must be a list of {width} numbers, got {got}")
        if not all(isinstance(c, int | float) and not isinstance(c, bool) for c in p):
            raise ExplorerError(f"{key}[{i}] holds a value that is not a number")
    t = torch.tensor(v, dtype=torch.float64)
    if not torch.isfinite(t).all():
        raise ExplorerError(f"{key} holds NaN or infinite values")
    if integer:
        if (t != t.round()).any() or (t < 0).any() or (t >= top).any():
            raise ExplorerError(f"{key} must hold whole numbers in [0, {top})")
        return t.long()
    return t.float()


def get_context(ex: Explorer, body: Body) -> Tensor | None:
    """The context a request names (``label`` or ``split`` + ``context_index``), checked."""
    given = {}
    for key in ("label", "context_index"):
        v = body.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise ExplorerError(f"{key} must be an integer, got {v!r}")
        given[key] = v
    return ex.context(given["label"], body.get("split", "test"), given["context_index"])


# --- writing responses ----------------------------------------------------------------
def encode_images(x: Tensor, fmt: str, value_range: tuple[float, float]) -> Body:
    """Decoded data ``[N, *event]`` as the page draws it (see the module docstring)."""
    n = x.shape[0]
    lo, hi = value_range
    if not is_image(tuple(x.shape[1:])):
        values = x.reshape(n, -1).clamp(-1e30, 1e30).nan_to_num(0.0)
        return {"format": "vector", "n": n, "values": values.tolist(), "value_range": [lo, hi]}
    u8 = ((x - lo) / max(hi - lo, 1e-12)).nan_to_num(0.0).clamp(0, 1).mul(255).round()
    u8 = u8.to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # [N, H, W, C]
    _, h, w, c = u8.shape
    out: Body = {"format": fmt, "n": n, "height": h, "width": w, "channels": c}
    if fmt == "raw":
        out["data"] = base64.b64encode(u8.numpy().tobytes()).decode("ascii")
    else:
        out["png"] = [png_data_url(img) for img in u8.numpy()]
    return out


def png_data_url(img) -> str:
    """One ``[H, W, C]`` uint8 image as a ``data:image/png`` URL (Pillow)."""
    from PIL import Image

    arr = img[..., 0] if img.shape[-1] == 1 else img
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def clean(v: Any) -> Any:
    """JSON-safe: NaN and infinities become null (JSON has neither)."""
    if isinstance(v, float):
        return finite_or_none(v)
    if isinstance(v, dict):
        return {k: clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [clean(x) for x in v]
    return v


def rounded(t: Tensor, digits: int = 5) -> list:
    return [[round(float(c), digits) for c in row] for row in t.tolist()]


# --- the app --------------------------------------------------------------------------
def create_app(explorer: Explorer) -> Starlette:
    """The explorer's Starlette app (serve it with uvicorn, test it with TestClient)."""
    ex = explorer
    value_range = tuple(ex.dataset_info.get("value_range", (0.0, 1.0)))
    discrete = ex.latent.kind != "continuous"
    top = ex.latent.classes or 0

    def images(x: Tensor, fmt: str) -> Body:
        return encode_images(x, fmt, value_range)  # type: ignore[arg-type]

    def coords_out(c: Tensor) -> list:
        return c.tolist() if discrete else rounded(c)

    async def index(request: Request) -> Response:
        return FileResponse(str(STATIC / "index.html"))

    async def info(request: Request) -> Response:
        low, high = ex.slider_range()
        splits = ex.splits()
        observed = ex.model.scored_mask
        if observed is not None and is_image(ex.event_shape):  # pixels given in every channel
            observed = (observed == 0).all(0).int().tolist()
        return JSONResponse(
            clean(
                {
                    "run": str(ex.run_dir),
                    "name": ex.run_dir.name,
                    "model": ex.config.model.model,
                    "latent": ex.latent.describe(),
                    "coord_dim": ex.coord_dim,
                    "coord_kind": "index" if discrete else "real",
                    "low": low,
                    "high": high,
                    "origin": coords_out(ex.origin().unsqueeze(0))[0],
                    "event_shape": list(ex.event_shape),
                    "image": is_image(ex.event_shape),
                    "value_range": list(value_range),
                    "dataset": ex.dataset_info.get("name", ex.config.data.dataset),
                    "has_labels": bool(ex.dataset_info.get("has_labels", False)),
                    "splits": splits,
                    "default_split": "test" if "test" in splits else None,
                    "data_error": ex.data_error,
                    "map_mode": ex.map_mode(),
                    "interpolation_methods": ex.interpolation_methods(),
                    "limits": {"points": MAX_POINTS, "steps": MAX_STEPS},
                    "conditions_on": ex.conditions_on,
                    "classes": ex.class_names(),
                    "observed_mask": observed,
                }
            )
        )

    async def summary(request: Request) -> Response:
        metrics = ckpt.read_metrics(ex.run_dir)
        records = [
            {k: v for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            for r in metrics
            if "epoch" in r
        ]
        evaluations = {}
        for path in sorted(ex.run_dir.glob("eval*.json")):
            try:
                evaluations[path.name] = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
                evaluations[path.name] = {"error": f"unreadable: {e}"}
        body = {
            "records": records,
            "final": metrics[-1] if metrics else None,
            "evaluations": evaluations,
            "config": ex.config.to_dict(),
        }
        return JSONResponse(clean(body))

    async def latent_map(request: Request) -> Response:
        split = request.query_params.get("split", "test")
        m = await run_in_threadpool(ex.latent_map, split)
        inverse_pca = m.components is not None and ex.map_mode() == "inverse"
        pca = (
            {"mean": m.mean.tolist(), "components": m.components.tolist()} if inverse_pca else None
        )
        return JSONResponse(
            clean(
                {
                    "split": split,
                    "n": len(m.xy),
                    "total": m.total,
                    "xy": rounded(m.xy, 4),
                    "labels": m.labels.tolist() if m.labels is not None else None,
                    "axes": list(m.axes),
                    "explained": list(m.explained) if m.explained else None,
                    "mode": ex.map_mode(),
                    "pca": pca,
                }
            )
        )

    async def example(request: Request) -> Response:
        q = request.query_params
        split = q.get("split", "test")
        index = get_int(dict(q), "index", 0, 0, 10**9)
        fmt = get_choice(dict(q), "format", "raw", FORMATS)

        def work() -> Body:
            x, c = ex.example(split, index)
            labels = ex.latent_map(split).labels
            return {
                "index": index,
                "coords": coords_out(c.unsqueeze(0))[0],
                "example": images(x.unsqueeze(0), fmt),
                "decoded": images(ex.decode(c.unsqueeze(0), ex.example_context(split, index)), fmt),
                "label": None if labels is None else int(labels[index]),
            }

        return JSONResponse(await run_in_threadpool(work))

    async def decode(request: Request) -> Response:
        body = await read_body(request)
        fmt = get_choice(body, "format", "raw", FORMATS)
        coords = get_points(body, "coords", ex.coord_dim, discrete, top)

        def work() -> Tensor:
            return ex.decode(coords, get_context(ex, body))

        x = await run_in_threadpool(work)
        return JSONResponse({"images": images(x, fmt)})

    async def map_decode(request: Request) -> Response:
        body = await read_body(request)
        fmt = get_choice(body, "format", "raw", FORMATS)
        split = body.get("split", "test")
        points = get_points(body, "points", 2)

        def work() -> Body:
            context = get_context(ex, body)
            coords, nearest = ex.map_to_coords(split, points)
            out = {"coords": coords_out(coords), "nearest": nearest.tolist()}
            return {**out, "images": images(ex.decode(coords, context), fmt)}

        return JSONResponse(await run_in_threadpool(work))

    async def interpolate(request: Request) -> Response:
        body = await read_body(request)
        fmt = get_choice(body, "format", "raw", FORMATS)
        split = body.get("split", "test")
        methods = ex.interpolation_methods()
        method = get_choice(body, "method", methods[0], methods)
        steps = get_int(body, "steps", 10, 2, MAX_STEPS)
        a, b = get_int(body, "a", None, 0, 10**9), get_int(body, "b", None, 0, 10**9)

        def work() -> Body:
            context = get_context(ex, body)
            (_, ca), (_, cb) = ex.example(split, a), ex.example(split, b)
            path = ex.interpolate(ca, cb, steps, method)
            return {
                "method": method,
                "coords": coords_out(path),
                "images": images(ex.decode(path, context), fmt),
            }

        return JSONResponse(await run_in_threadpool(work))

    async def prior(request: Request) -> Response:
        body = await read_body(request)
        fmt = get_choice(body, "format", "raw", FORMATS)
        n = get_int(body, "n", 16, 1, MAX_POINTS)
        temperature = get_float(body, "temperature", 1.0, 0.0, 10.0)
        seed = get_int(body, "seed", 0, 0, 2**63 - 1)

        def work() -> Body:
            context = get_context(ex, body)
            coords = ex.prior_samples(n, temperature, seed, context)
            return {
                "coords": coords_out(coords),
                "images": images(ex.decode(coords, context), fmt),
            }

        return JSONResponse(await run_in_threadpool(work))

    async def origin(request: Request) -> Response:
        body = await read_body(request)
        fmt = get_choice(body, "format", "raw", FORMATS)

        def work() -> Body:
            context = get_context(ex, body)
            coords = ex.origin(context).unsqueeze(0)
            return {"coords": coords_out(coords), "images": images(ex.decode(coords, context), fmt)}

        return JSONResponse(await run_in_threadpool(work))

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ExplorerError):
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    routes = [
        Route("/", index),
        Route("/api/info", info),
        Route("/api/summary", summary),
        Route("/api/map", latent_map),
        Route("/api/example", example),
        Route("/api/decode", decode, methods=["POST"]),
        Route("/api/map/decode", map_decode, methods=["POST"]),
        Route("/api/interpolate", interpolate, methods=["POST"]),
        Route("/api/prior", prior, methods=["POST"]),
        Route("/api/origin", origin, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        ExplorerError: on_error,
        HTTPException: on_error,
    }
    return Starlette(routes=routes, exception_handlers=handlers)


# --- serving --------------------------------------------------------------------------
def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this. Without it, a keep-alive client's second request
    # waits ~40 ms for a delayed ACK (Nagle), since uvicorn leaves pre-bound sockets alone.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ExplorerError(
            f"cannot listen on {host}:{port} ({e.strerror}); choose another --port (0 picks a free one)"
        ) from None
    sock.listen(128)
    return sock


def make_server(app: Starlette, sock: socket.socket, log_level: str = "warning"):
    """A uvicorn server for ``app`` on the bound ``sock`` (``server.run(sockets=[sock])``)."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False)
    return uvicorn.Server(config)

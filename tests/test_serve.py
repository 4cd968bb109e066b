"""``aevb serve``: the explorer's endpoints through Starlette's TestClient.

The decoded images are checked against the Python API (``posterior``, ``generate``), bad
requests against their 4xx JSON answers, and discrete latents (codes, categorical) with
two toy models that use only the model interface.
"""

from __future__ import annotations

import base64
import io
import json
import math
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, run_cli
from torch import Tensor, nn

import aevb
from aevb import checkpoint as ckpt
from aevb.errors import AevbError, DataError
from aevb.latents import LatentGroup, LatentSpace, NoiseSpec, Posterior, Prior
from aevb.likelihoods import build_likelihood
from aevb.models import register_model
from aevb.models.base import LatentVariableModel

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
from starlette.testclient import TestClient  # noqa: E402

from aevb.serve.app import MAX_POINTS, create_app  # noqa: E402
from aevb.serve.explorer import Explorer, pca  # noqa: E402


def client(run: Path) -> TestClient:
    return TestClient(create_app(Explorer(run)))


@pytest.fixture(scope="module")
def api(run_dir) -> TestClient:
    """The explorer of the conftest's 2-D digits run."""
    return client(run_dir)


@pytest.fixture(scope="module")
def api_4d(digits_run_4d) -> TestClient:
    """The explorer of a 4-D run: its map is PCA."""
    return client(digits_run_4d)


def pixels(images: dict) -> Tensor:
    """The raw payload as ``[n, H, W, C]`` uint8."""
    assert images["format"] == "raw"
    data = base64.b64decode(images["data"])
    shape = (images["n"], images["height"], images["width"], images["channels"])
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(shape)


def as_u8(x: Tensor) -> Tensor:
    """What the server sends for decoded data ``[n, C, H, W]`` in [0, 1]."""
    return x.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1)


# --- what the page reads ------------------------------------------------------------------
def test_page_and_static_files_are_served_from_the_package(api):
    page = api.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for name, kind in [("app.js", "javascript"), ("style.css", "css")]:
        r = api.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
        assert "http://" not in r.text and "https://" not in r.text  # no CDN
    assert "https://" not in page.text and "http://" not in page.text


def test_info_describes_the_latent_and_the_data(api, run_dir):
    info = api.get("/api/info").json()
    assert info["latent"]["kind"] == "continuous" and info["coord_dim"] == 2
    assert info["origin"] == [0.0, 0.0]
    assert all(lo < -2 and hi > 2 for lo, hi in zip(info["low"], info["high"], strict=True))
    assert info["image"] and info["event_shape"] == [1, 8, 8]
    assert info["splits"] == {"train": 1437, "valid": 180, "test": 180}
    assert info["interpolation_methods"] == ["linear", "spherical"]
    assert info["map_mode"] == "inverse" and info["limits"]["points"] == MAX_POINTS


def test_summary_holds_the_curves_and_any_evaluation_file(api, run_dir, tmp_path):
    s = api.get("/api/summary").json()
    records = [r for r in ckpt.read_metrics(run_dir) if "epoch" in r]
    assert len(s["records"]) == len(records) >= 1
    assert {"valid_neg_elbo", "valid_kl", "valid_recon_nll"} <= s["records"][-1].keys()
    assert s["evaluations"] == {}
    run = shutil.copytree(run_dir, tmp_path / "run")
    (run / "evaluation.json").write_text(json.dumps({"log_px_iw": -25.5, "gap": float("nan")}))
    ev = client(run).get("/api/summary").json()["evaluations"]
    assert ev == {"evaluation.json": {"log_px_iw": -25.5, "gap": None}}  # NaN -> null


# --- the latent map -----------------------------------------------------------------------
def test_map_of_a_2d_latent_is_the_posterior_means(api, run_dir):
    m = api.get("/api/map", params={"split": "test"}).json()
    model, ds = aevb.load(run_dir), aevb.load_dataset(ckpt.load_config(run_dir).data)
    mu = model.posterior(ds.tensor("test")).summary()
    assert m["n"] == m["total"] == 180 and m["axes"] == ["z1", "z2"] and m["pca"] is None
    torch.testing.assert_close(torch.tensor(m["xy"]), mu, atol=1e-4, rtol=0)
    assert m["labels"] == ds.labels("test").tolist()


def test_map_of_a_larger_latent_is_pca_and_clicks_go_back_through_it(api_4d, digits_run_4d):
    m = api_4d.get("/api/map", params={"split": "valid"}).json()
    assert m["axes"] == ["PC1", "PC2"] and len(m["xy"]) == 180
    assert 1 >= m["explained"][0] >= m["explained"][1] > 0
    mean, comps = torch.tensor(m["pca"]["mean"]), torch.tensor(m["pca"]["components"])
    torch.testing.assert_close(comps @ comps.T, torch.eye(2, dtype=comps.dtype), atol=1e-6, rtol=0)
    point = [0.7, -0.4]
    r = api_4d.post("/api/map/decode", json={"split": "valid", "points": [point]}).json()
    z = mean + torch.tensor(point, dtype=mean.dtype) @ comps  # mean + components^T (pc1, pc2)
    torch.testing.assert_close(torch.tensor(r["coords"][0]), z.float(), atol=1e-4, rtol=0)
    x = aevb.load(digits_run_4d).generate(torch.tensor(r["coords"]))
    assert torch.equal(pixels(r["images"]), as_u8(x))
    nearest = torch.cdist(torch.tensor([point]), torch.tensor(m["xy"])).argmin()
    assert r["nearest"] == [int(nearest)]


def test_pca_matches_scikit_learn():
    decomposition = pytest.importorskip("sklearn.decomposition")
    s = torch.randn(200, 5, generator=torch.Generator().manual_seed(0)).double()
    s = s * torch.tensor([3.0, 2.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    mean, comps, explained = pca(s, 2)
    ref = decomposition.PCA(2, svd_solver="full").fit(s.numpy())
    torch.testing.assert_close(mean, torch.from_numpy(ref.mean_))
    torch.testing.assert_close(comps.abs(), torch.from_numpy(ref.components_).abs())
    assert explained == pytest.approx(tuple(ref.explained_variance_ratio_))


# --- decoding -----------------------------------------------------------------------------
def test_decode_equals_the_python_api_and_batching_changes_nothing(api, run_dir):
    z = torch.randn(7, 2, generator=torch.Generator().manual_seed(1))
    r = api.post("/api/decode", json={"coords": z.tolist()}).json()["images"]
    assert (r["n"], r["height"], r["width"], r["channels"]) == (7, 8, 8, 1)
    batch = pixels(r)
    x = aevb.load(run_dir).generate(torch.tensor(z.tolist()))
    assert torch.equal(batch, as_u8(x))
    one = [
        pixels(api.post("/api/decode", json={"coords": [p]}).json()["images"]) for p in z.tolist()
    ]
    assert torch.equal(torch.cat(one), batch)


def test_png_and_raw_formats_carry_the_same_pixels(api):
    from PIL import Image

    coords = [[0.5, -1.0], [-2.0, 0.3]]
    raw = pixels(api.post("/api/decode", json={"coords": coords}).json()["images"])
    png = api.post("/api/decode", json={"coords": coords, "format": "png"}).json()["images"]
    for i, url in enumerate(png["png"]):
        assert url.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert img.size == (8, 8) and torch.equal(torch.from_numpy(np.array(img)), raw[i, ..., 0])


def test_example_is_the_posterior_point_and_its_reconstruction(api, run_dir):
    r = api.get("/api/example", params={"split": "test", "index": 5}).json()
    model, ds = aevb.load(run_dir), aevb.load_dataset(ckpt.load_config(run_dir).data)
    x = ds.tensor("test")[5:6]
    torch.testing.assert_close(
        torch.tensor(r["coords"]), model.posterior(x).point()[0], atol=1e-4, rtol=0
    )
    assert torch.equal(pixels(r["example"]), as_u8(x))
    assert torch.equal(pixels(r["decoded"]), as_u8(model.generate(torch.tensor([r["coords"]]))))


@pytest.mark.parametrize("method", ["linear", "spherical"])
def test_interpolation_runs_between_the_two_examples(api, method):
    ends = [api.get("/api/example", params={"index": i}).json()["coords"] for i in (3, 9)]
    body = {"split": "test", "a": 3, "b": 9, "steps": 6, "method": method}
    r = api.post("/api/interpolate", json=body).json()
    assert r["method"] == method and len(r["coords"]) == 6 and r["images"]["n"] == 6
    assert r["coords"][0] == pytest.approx(ends[0], abs=1e-4)
    assert r["coords"][-1] == pytest.approx(ends[1], abs=1e-4)


def test_prior_samples_follow_seed_and_temperature(api):
    a = api.post("/api/prior", json={"n": 64, "temperature": 1.0, "seed": 3}).json()
    b = api.post("/api/prior", json={"n": 64, "temperature": 1.0, "seed": 3}).json()
    assert a == b and a["images"]["n"] == 64
    cold = api.post("/api/prior", json={"n": 64, "temperature": 0.2, "seed": 3}).json()
    torch.testing.assert_close(
        torch.tensor(cold["coords"]), 0.2 * torch.tensor(a["coords"]), atol=1e-4, rtol=0
    )
    zero = api.post("/api/prior", json={"n": 2, "temperature": 0}).json()["coords"]
    assert zero == [[0.0, 0.0], [0.0, 0.0]]


# --- bad requests -------------------------------------------------------------------------
BAD = [
    ("post", "/api/decode", b"{not json", 400, "malformed JSON"),
    ("post", "/api/decode", b"[[0, 0]]", 400, "JSON object"),
    ("post", "/api/decode", {"coords": [[0.0, 0.0, 0.0]]}, 422, "list of 2 numbers"),
    ("post", "/api/decode", {"coords": [0.0, 0.0]}, 422, "list of 2 numbers"),
    ("post", "/api/decode", {"coords": []}, 422, "non-empty"),
    ("post", "/api/decode", b'{"coords": [[NaN, 0]]}', 422, "NaN or infinite"),
    ("post", "/api/decode", b'{"coords": [[Infinity, 0]]}', 422, "NaN or infinite"),
    ("post", "/api/decode", b'{"coords": [[1e400, 0]]}', 422, "NaN or infinite"),
    ("post", "/api/decode", {"coords": [["0", 0]]}, 422, "not a number"),
    ("post", "/api/decode", {"coords": [[True, 0]]}, 422, "not a number"),
    ("post", "/api/decode", {"coords": [[None, 0]]}, 422, "not a number"),
    ("post", "/api/decode", {"coords": [[0, 0]] * (MAX_POINTS + 1)}, 413, "at most 1024"),
    ("post", "/api/decode", {"coords": [[0, 0]], "format": "gif"}, 422, "format"),
    ("get", "/api/map?split=nope", None, 404, "unknown split"),
    ("post", "/api/map/decode", {"split": "nope", "points": [[0, 0]]}, 404, "unknown split"),
    ("post", "/api/map/decode", {"split": ["x"], "points": [[0, 0]]}, 404, "unknown split"),
    ("post", "/api/map/decode", {"points": [[0, 0, 0]]}, 422, "list of 2 numbers"),
    ("post", "/api/interpolate", {"a": 0, "b": 1, "split": "tset"}, 404, "unknown split"),
    ("post", "/api/interpolate", {"a": 0, "b": 99999}, 422, "index must be in"),
    ("post", "/api/interpolate", {"a": 0, "b": 1, "steps": 1000}, 413, "steps"),
    ("post", "/api/interpolate", {"a": 0, "b": 1, "method": "cubic"}, 422, "method"),
    ("post", "/api/interpolate", {"a": 0}, 422, "b must be an integer"),
    ("post", "/api/prior", {"n": 10**6}, 413, "n must be in"),
    ("post", "/api/prior", {"n": 0}, 422, "n must be in"),
    ("post", "/api/prior", b'{"temperature": NaN}', 422, "finite"),
    ("post", "/api/prior", {"temperature": -1}, 422, "temperature"),
    ("get", "/api/example?index=-1", None, 422, "index"),
    ("get", "/api/example?index=abc", None, 422, "integer"),
    ("get", "/api/nothing", None, 404, "Not Found"),
    ("get", "/api/decode", None, 405, "Method Not Allowed"),
]


@pytest.mark.parametrize("method,path,body,status,words", BAD)
def test_bad_requests_get_a_4xx_json_error_and_the_server_keeps_serving(
    api, method, path, body, status, words
):
    if method == "get":
        r = api.get(path)
    elif isinstance(body, bytes):
        r = api.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = api.post(path, json=body)
    assert r.status_code == status, r.text
    assert words.lower() in r.json()["error"].lower()
    assert api.post("/api/decode", json={"coords": [[0.0, 0.0]]}).status_code == 200


def test_a_body_over_the_limit_is_refused(api, monkeypatch):
    monkeypatch.setattr("aevb.serve.app.MAX_BODY_BYTES", 100)
    r = api.post("/api/decode", json={"coords": [[0.0, 0.0]] * 20})
    assert r.status_code == 413 and "bytes" in r.json()["error"]


# --- the command --------------------------------------------------------------------------
def test_serve_a_missing_or_unfinished_run_is_a_one_line_error(run_dir, tmp_path):
    assert_one_line_error(run_cli("serve", tmp_path / "nope"), "does not exist", code=1)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(run_dir / ckpt.CONFIG_FILE, unfinished)
    res = run_cli("serve", unfinished)
    assert_one_line_error(res, "has not finished", "--resume", code=1)


def test_serve_on_a_busy_port_is_a_one_line_error(run_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        res = run_cli("serve", run_dir, "--port", str(busy.getsockname()[1]))
    assert_one_line_error(res, "cannot listen", "--port", code=1)


# --- discrete latents: toy models that use only the interface --------------------------------
class ToyPosterior(Posterior):
    """Logits ``[B, *positions, K]``; the point is the argmax (an index or a one-hot)."""

    def __init__(self, logits: Tensor, one_hot: bool):
        self.logits, self.one_hot = logits, one_hot

    def summary(self) -> Tensor:
        return self.logits.softmax(-1).flatten(1)

    def point(self) -> Tensor:
        idx = self.logits.argmax(-1)
        return nn.functional.one_hot(idx, self.logits.shape[-1]).float() if self.one_hot else idx


class ToyPrior(Prior):
    def __init__(self, positions: tuple[int, ...], k: int, one_hot: bool):
        self.positions, self.k, self.one_hot = positions, k, one_hot

    def sample(self, n, temperature=1.0, generator=None) -> Tensor:
        idx = torch.randint(self.k, (n, *self.positions), generator=generator)
        return nn.functional.one_hot(idx, self.k).float() if self.one_hot else idx


class ToyDiscrete(LatentVariableModel):
    """A linear encoder to K-way logits per position and a linear decoder; 8x8 images."""

    kind, positions, k = "codes", (2, 3), 5

    def __init__(self, config, sections):
        super().__init__()
        self.config = config
        one_hot = self.kind == "categorical"
        p = math.prod(self.positions)
        shape = (*self.positions, self.k) if one_hot else self.positions
        self.latent = LatentSpace(
            self.kind, shape, (LatentGroup("z", p * (self.k if one_hot else 1)),),
            NoiseSpec("none", (0,)), summary_dim=p * self.k, classes=self.k,
        )  # fmt: skip
        self.likelihood = build_likelihood("bernoulli", (1, 8, 8), 0.1, 1e-3)
        self.encoder = nn.Linear(64, p * self.k)
        self.embed_codes = nn.Embedding(self.k, self.k)
        self.decoder = nn.Linear(p * self.k, 64)

    def posterior(self, x, y=None):
        return ToyPosterior(
            self.encoder(x.flatten(1)).view(-1, *self.positions, self.k), self.kind == "categorical"
        )

    def prior(self, y=None):
        return ToyPrior(self.positions, self.k, self.kind == "categorical")

    def decode(self, z, y=None):
        h = z if self.kind == "categorical" else self.embed_codes(z)  # [..., *positions, K]
        lead = h.shape[: h.dim() - len(self.positions) - 1]
        return self.decoder(h.reshape(*lead, -1)).view(*lead, 1, 1, 8, 8)


@register_model
class ToyCodes(ToyDiscrete):
    name = "serve-toy-codes"


@register_model
class ToyCategorical(ToyDiscrete):
    name, kind, positions = "serve-toy-categorical", "categorical", (4,)


@pytest.fixture(scope="module", params=[ToyCodes, ToyCategorical], ids=["codes", "categorical"])
def toy(request, run_dir, tmp_path_factory) -> tuple[TestClient, nn.Module]:
    """A run directory of a toy discrete model (the digits run's data and curves)."""
    run = tmp_path_factory.mktemp("toy") / request.param.name
    run.mkdir()
    shutil.copy(run_dir / ckpt.METRICS_FILE, run)
    d = json.loads((run_dir / ckpt.CONFIG_FILE).read_text())
    d["model"]["model"] = request.param.name
    d.pop("vae", None)  # the Gaussian latent's section does not apply to the toy
    (run / ckpt.CONFIG_FILE).write_text(json.dumps(d))
    torch.manual_seed(0)
    ckpt.save_model(request.param(ckpt.load_config(run).model, {}), run)
    return client(run), aevb.load(run)


def test_discrete_latents_are_edited_as_indices(toy):
    api, model = toy
    info = api.get("/api/info").json()
    positions = math.prod(model.positions)
    assert info["coord_kind"] == "index" and info["coord_dim"] == positions
    assert info["interpolation_methods"] == ["discrete"] and info["map_mode"] == "nearest"
    assert info["high"] == [model.k - 1] * positions and all(
        0 <= c < model.k for c in info["origin"]
    )
    coords = [[j % model.k for j in range(positions)], [model.k - 1] * positions]
    x = pixels(api.post("/api/decode", json={"coords": coords}).json()["images"])
    z = torch.tensor(coords).view(2, *model.positions)
    if model.kind == "categorical":
        z = nn.functional.one_hot(z, model.k).float()
    assert torch.equal(x, as_u8(model.generate(z)))
    for bad in (
        [[0.5] + [0] * (positions - 1)],
        [[model.k] + [0] * (positions - 1)],
        [[-1] * positions],
    ):
        r = api.post("/api/decode", json={"coords": bad})
        assert r.status_code == 422 and "whole numbers in [0, 5)" in r.json()["error"]


def test_discrete_map_prior_and_interpolation(toy):
    api, model = toy
    positions = math.prod(model.positions)
    m = api.get("/api/map").json()
    assert m["axes"] == ["PC1", "PC2"] and m["pca"] is None and m["mode"] == "nearest"
    r = api.post("/api/map/decode", json={"points": [m["xy"][7]]}).json()
    assert r["nearest"] == [7]
    assert r["coords"] == [api.get("/api/example", params={"index": 7}).json()["coords"]]
    prior = api.post("/api/prior", json={"n": 9, "seed": 1}).json()["coords"]
    assert len(prior) == 9 and all(
        len(c) == positions and 0 <= min(c) <= max(c) < model.k for c in prior
    )
    path = api.post("/api/interpolate", json={"a": 0, "b": 1, "steps": positions + 1}).json()
    a, b = (api.get("/api/example", params={"index": i}).json()["coords"] for i in (0, 1))
    assert path["method"] == "discrete" and path["coords"][0] == a and path["coords"][-1] == b
    for t, c in enumerate(path["coords"]):  # step t holds B's first t positions
        assert c == b[:t] + a[t:]


# --- conditional models: the context of every decode ------------------------------------------
@pytest.fixture(scope="module")
def cvae(cvae_run):
    """(TestClient, model, test split x, test labels) of a conditional run by name."""
    made: dict[str, tuple] = {}

    def get(name: str) -> tuple[TestClient, nn.Module, Tensor, Tensor]:
        if name not in made:
            run = cvae_run(name)
            ds = aevb.load_dataset(ckpt.load_config(run).data)
            made[name] = (client(run), aevb.load(run), ds.tensor("test"), ds.labels("test"))
        return made[name]

    return get


@pytest.mark.parametrize("name", ["labels", "labels-prior"])
def test_a_label_model_decodes_with_the_selected_class(cvae, name):
    api, model, x, y = cvae(name)
    info = api.get("/api/info").json()
    assert info["conditions_on"] == "labels" and info["observed_mask"] is None
    assert info["classes"] == [str(k) for k in range(10)]  # digits records no class names
    z = torch.randn(5, info["coord_dim"], generator=torch.Generator().manual_seed(2))
    images = {}
    for label in (3, 7):
        r = api.post("/api/decode", json={"coords": z.tolist(), "label": label}).json()
        want = model.generate(torch.tensor(z.tolist()), torch.full((5,), label))
        images[label] = pixels(r["images"])
        assert torch.equal(images[label], as_u8(want))
    assert not torch.equal(images[3], images[7])  # the class changes the picture
    # the map embeds each example with its own label; an example decodes with its own too
    m = api.get("/api/map").json()
    q = model.posterior(x, y)
    assert m["labels"] == y.tolist()
    if info["coord_dim"] == 2:
        torch.testing.assert_close(torch.tensor(m["xy"]), q.summary(), atol=1e-4, rtol=0)
    e = api.get("/api/example", params={"index": 4}).json()
    assert e["label"] == int(y[4])
    torch.testing.assert_close(torch.tensor(e["coords"]), q.point()[4], atol=1e-4, rtol=0)
    point = torch.tensor([e["coords"]])
    assert torch.equal(pixels(e["decoded"]), as_u8(model.generate(point, y[4:5])))
    # map clicks and interpolation paths decode with the selected class
    r = api.post("/api/map/decode", json={"points": [m["xy"][9]], "label": 5}).json()
    want = model.generate(torch.tensor(r["coords"]), torch.tensor([5]))
    assert torch.equal(pixels(r["images"]), as_u8(want))
    r = api.post("/api/interpolate", json={"a": 0, "b": 1, "steps": 4, "label": 2}).json()
    want = model.generate(torch.tensor(r["coords"]), torch.full((4,), 2))
    assert torch.equal(pixels(r["images"]), as_u8(want))


@pytest.mark.parametrize("name", ["labels", "labels-prior"])
def test_prior_samples_of_a_label_model_draw_p_z_given_the_class(cvae, name):
    api, model, _, _ = cvae(name)
    draws = {}
    for label in (1, 8):
        r = api.post("/api/prior", json={"n": 6, "seed": 4, "temperature": 0.8, "label": label})
        r = r.json()
        y = torch.full((6,), label)
        z = model.prior(y).sample(6, 0.8, torch.Generator().manual_seed(4))
        torch.testing.assert_close(torch.tensor(r["coords"]), z, atol=1e-4, rtol=0)
        assert torch.equal(pixels(r["images"]), as_u8(model.generate(torch.tensor(r["coords"]), y)))
        draws[label] = torch.tensor(r["coords"])
        origin = torch.tensor(api.post("/api/origin", json={"label": label}).json()["coords"][0])
        if name == "labels":  # N(0, I) whatever the class: the same z for the same seed
            assert torch.equal(origin, torch.zeros(2))
        else:  # the mean of p(z|y) (of 512 draws: within 5 standard errors)
            p = model.prior(torch.tensor([label]))
            se = torch.exp(0.5 * p.logvar[0]) / math.sqrt(512)
            assert ((origin - p.mu[0]).abs() < 5 * se).all(), (origin, p.mu[0], se)
    assert torch.equal(draws[1], draws[8]) == (name == "labels")


def test_a_completion_model_keeps_the_chosen_examples_observed_part(cvae, cvae_run):
    api, model, x, _ = cvae("mask")
    info = api.get("/api/info").json()
    assert info["conditions_on"] == "observed" and info["classes"] is None
    seen = torch.tensor(info["observed_mask"], dtype=torch.bool)  # [H, W]: rows 0..3 (top)
    assert torch.equal(seen, model.scored_mask[0] == 0) and seen[:4].all() and not seen[4:].any()
    z = torch.randn(3, 3, generator=torch.Generator().manual_seed(5))
    for i in (2, 11):
        r = api.post("/api/decode", json={"coords": z.tolist(), "context_index": i}).json()
        c = model.context(x[i : i + 1]).expand(3, -1, -1, -1)
        got = pixels(r["images"])
        assert torch.equal(got, as_u8(model.generate(torch.tensor(z.tolist()), c)))
        assert torch.equal(got[:, :4], as_u8(x[i : i + 1]).expand(3, -1, -1, -1)[:, :4])
    # prior samples for the chosen example are its completions (model.complete, same seed)
    r = api.post("/api/prior", json={"n": 8, "seed": 6, "context_index": 2}).json()
    gen = torch.Generator().manual_seed(6)
    want = model.complete(x[2:3], 8, mean=True, generator=gen)[:, 0]
    assert torch.equal(pixels(r["images"]), as_u8(want))
    origin = api.post("/api/origin", json={"context_index": 2}).json()["coords"][0]
    p = model.prior(model.context(x[2:3]))  # p(z | x_obs), learned: its mean, of 512 draws
    se = torch.exp(0.5 * p.logvar[0]) / math.sqrt(512)
    assert ((torch.tensor(origin) - p.mu[0]).abs() < 5 * se).all()
    # the map embeds each example with its own observed part; the context follows the split
    m = api.get("/api/map", params={"split": "valid"}).json()
    xv = aevb.load_dataset(ckpt.load_config(cvae_run("mask")).data).tensor("valid")
    pc = model.posterior(xv, model.context(xv)).summary()
    mean, comps = (torch.tensor(m["pca"][k], dtype=torch.float64) for k in ("mean", "components"))
    xy = ((pc.double() - mean) @ comps.T).float()
    torch.testing.assert_close(torch.tensor(m["xy"]), xy, atol=1e-4, rtol=0)
    body = {"split": "valid", "points": [[0.1, 0.2]], "context_index": 7}
    r = api.post("/api/map/decode", json=body).json()
    want = model.generate(torch.tensor(r["coords"]), model.context(xv[7:8]))
    assert torch.equal(pixels(r["images"]), as_u8(want))


BAD_CONTEXT = [
    ("labels", "/api/decode", {"coords": [[0, 0]]}, 422, "give label, a class in [0, 9]"),
    ("labels", "/api/decode", {"coords": [[0, 0]], "label": 10}, 422, "class in [0, 9], got 10"),
    ("labels", "/api/decode", {"coords": [[0, 0]], "label": -1}, 422, "got -1"),
    ("labels", "/api/decode", {"coords": [[0, 0]], "label": "3"}, 422, "label must be an integer"),
    ("labels", "/api/decode", {"coords": [[0, 0]], "label": True}, 422, "must be an integer"),
    ("labels", "/api/decode", {"coords": [[0, 0]], "label": 1, "context_index": 0}, 422,
     "not context_index"),
    ("labels", "/api/prior", {"n": 2}, 422, "give label"),
    ("labels", "/api/origin", {"label": 99}, 422, "got 99"),
    ("labels", "/api/map/decode", {"points": [[0, 0]]}, 422, "give label"),
    ("labels", "/api/interpolate", {"a": 0, "b": 1, "label": 12}, 422, "got 12"),
    ("mask", "/api/decode", {"coords": [[0, 0, 0]]}, 422, "give context_index"),
    ("mask", "/api/decode", {"coords": [[0, 0, 0]], "label": 3}, 422, "not label"),
    ("mask", "/api/decode", {"coords": [[0, 0, 0]], "context_index": 99999}, 422,
     "context_index must be in [0, 180)"),
    ("mask", "/api/decode", {"coords": [[0, 0, 0]], "context_index": -2}, 422, "context_index"),
    ("mask", "/api/prior", {"context_index": 0, "split": "nope"}, 404, "unknown split"),
    ("mask", "/api/origin", {}, 422, "give context_index"),
    ("plain", "/api/decode", {"coords": [[0, 0]], "label": 3}, 422, "unconditional: drop label"),
    ("plain", "/api/prior", {"context_index": 0}, 422, "unconditional: drop context_index"),
    ("plain", "/api/map/decode", {"points": [[0, 0]], "label": 0}, 422, "unconditional"),
]  # fmt: skip
GOOD = {
    "labels": {"coords": [[0.0, 0.0]], "label": 0},
    "mask": {"coords": [[0.0, 0.0, 0.0]], "context_index": 0},
    "plain": {"coords": [[0.0, 0.0]]},
}


@pytest.mark.parametrize("name,path,body,status,words", BAD_CONTEXT)
def test_a_missing_or_wrong_context_is_a_4xx_and_the_server_keeps_serving(
    cvae, api, name, path, body, status, words
):
    served = api if name == "plain" else cvae(name)[0]
    r = served.post(path, json=body)
    assert r.status_code == status, r.text
    assert words.lower() in r.json()["error"].lower()
    assert served.post("/api/decode", json=GOOD[name]).status_code == 200


def test_an_unconditional_model_says_it_takes_no_context(api):
    info = api.get("/api/info").json()
    assert info["conditions_on"] is None and info["classes"] is None
    assert info["observed_mask"] is None
    origin = api.post("/api/origin", json={}).json()
    assert origin["coords"] == [info["origin"]] and origin["images"]["n"] == 1


def test_without_its_data_a_label_model_still_decodes_and_a_completion_model_says_why(
    cvae_run, monkeypatch
):
    def gone(run):
        raise DataError("the data folder is gone")

    monkeypatch.setattr("aevb.serve.explorer.load_run_dataset", gone)
    api = client(cvae_run("labels-prior"))  # the prior's marginal: every class in turn
    assert api.get("/api/info").json()["splits"] == {}
    r = api.post("/api/decode", json={"coords": [[0.0, 0.0, 0.0]], "label": 4})
    assert r.status_code == 200 and r.json()["images"]["n"] == 1
    r = api.post("/api/decode", json={"coords": [[0.0, 0.0, 0.0]], "label": 4, "split": "test"})
    assert r.status_code == 200
    with pytest.raises(AevbError, match="observed part.*the data folder is gone"):
        Explorer(cvae_run("mask"))

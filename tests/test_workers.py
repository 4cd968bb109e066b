"""The evaluator's worker threads (:class:`aevb.workspace.Workers`): chunks computed on
one thread each, handed back in order, PyTorch's threads set back whatever happens, and
the estimate the same numbers as the chunks computed one after another."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from helpers import make_model

from aevb import workspace
from aevb.estimators import importance_weighted
from aevb.workspace import Workers

CPU = torch.device("cpu")


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_chunks_run_on_one_thread_each_and_come_back_in_order(two_threads):
    seen = []

    def fn(i: int) -> int:
        time.sleep(0.002 * (i % 3))  # finish out of order
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return i * i

    with Workers(CPU, 20) as w:
        assert w.workers == 2
        out = list(w.map(fn, range(20)))
        assert torch.get_num_threads() == 1  # process-wide while the block runs
    assert out == [i * i for i in range(20)]
    assert {name.startswith("aevb-chunk") for name, _ in seen} == {True}
    assert len({name for name, _ in seen}) == 2
    assert {n for _, n in seen} == {1}
    assert torch.get_num_threads() == 2  # set back


def test_an_error_stops_the_work_and_sets_the_threads_back(two_threads):
    started = []

    def fn(i: int) -> int:
        started.append(i)
        if i == 3:
            raise ValueError("chunk 3")
        return i

    with pytest.raises(ValueError, match="chunk 3"), Workers(CPU, 100) as w:
        for _ in w.map(fn, range(100)):
            pass
    assert torch.get_num_threads() == 2
    assert len(started) <= 3 + 1 + 2 * w.workers  # only a few ran ahead; the rest cancelled

    # the loop's body failing does the same
    started.clear()
    with pytest.raises(KeyError), Workers(CPU, 100) as w:
        for i in w.map(fn, range(4, 100)):
            if i == 6:
                raise KeyError(i)
    assert torch.get_num_threads() == 2
    assert len(started) <= 3 + 2 * w.workers


def test_local_state_is_one_per_worker_and_modes_are_the_callers(two_threads):
    made = []

    def fn(i: int) -> tuple[int, bool, bool]:
        state = w.local(lambda: made.append(threading.current_thread().name) or object())
        return id(state), torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    with Workers(CPU, 10) as w, torch.inference_mode():
        out = list(w.map(fn, range(10)))
    assert len(made) == len(set(made)) <= 2 and len({o[0] for o in out}) == len(made)
    assert {o[1:] for o in out} == {(False, True)}
    with Workers(CPU, 10) as w:
        assert {o[1:] for o in w.map(fn, range(4))} == {(True, False)}


@pytest.mark.parametrize(
    "why", ["one thread", "one chunk", "switched off", "autocast", "not a cpu"]
)
def test_no_workers_where_they_do_not_apply(why, two_threads, monkeypatch):
    device, chunks = CPU, 10
    if why == "one thread":
        torch.set_num_threads(1)
    elif why == "one chunk":
        chunks = 1
    elif why == "switched off":
        monkeypatch.setattr(workspace, "WORKERS", False)
    elif why == "not a cpu":
        device = torch.device("meta")
    threads = torch.get_num_threads()
    with torch.autocast("cpu", enabled=why == "autocast"), Workers(device, chunks) as w:
        assert w.workers == 1
        names = list(w.map(lambda i: threading.current_thread().name, range(3)))
        assert torch.get_num_threads() == threads
    assert names == [threading.current_thread().name] * 3


MODELS = {
    "tanh-mlp": dict(hidden=(40, 30), latent_dim=6, activation="tanh"),
    "hvae": dict(
        model="hvae", hidden=(30, 20), latent_dims=(8, 4), hidden_top=(20,), activation="tanh"
    ),
    "gumbel": dict(model="gumbel", hidden=(30,), variables=3, categories=5),
}


def _model(name: str):
    torch.manual_seed(0)
    model = make_model(
        torch.float32, input_shape=(1, 12, 12), likelihood="bernoulli", **MODELS[name]
    ).eval()
    x = torch.rand(45, 1, 12, 12, generator=torch.Generator().manual_seed(1)).round()
    return model, x


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_estimate_with_workers_is_the_estimate_without(name, two_threads, monkeypatch):
    model, x = _model(name)
    prepared_in = []
    real = type(model).log_likelihood_fn

    def spy(self, *a, **kw):
        prepared_in.append(threading.current_thread().name)
        return real(self, *a, **kw)

    monkeypatch.setattr(type(model), "log_likelihood_fn", spy)
    with_workers = importance_weighted(model, x, 300, chunk_size=45 * 4)
    assert prepared_in and all(n.startswith("aevb-chunk") for n in prepared_in)
    assert len(prepared_in) <= 2  # once per worker, not per chunk
    assert torch.get_num_threads() == 2
    monkeypatch.setattr(workspace, "WORKERS", False)
    alone = importance_weighted(model, x, 300, chunk_size=45 * 4)
    for key in ("log_px_iw", "distortion", "rate", "gap"):
        # one thread per operation against two: the same calls, to the last bits
        assert (with_workers[key] - alone[key]).abs().max() <= 1e-5, key
    monkeypatch.setattr(workspace, "WORKERS", True)
    for chunk in (45, 45 * 7, 1 << 20):
        r = importance_weighted(model, x, 300, chunk_size=chunk)
        for key in ("log_px_iw", "distortion", "rate", "gap"):
            assert torch.equal(r[key], with_workers[key]), (chunk, key)


def test_the_naive_estimate_with_workers_is_the_estimate_without(two_threads, monkeypatch):
    from aevb.estimators import naive_prior

    model, x = _model("tanh-mlp")
    with_workers = naive_prior(model, x, 500, chunk_size=45 * 8)
    monkeypatch.setattr(workspace, "WORKERS", False)
    alone = naive_prior(model, x, 500, chunk_size=45 * 8)
    assert (with_workers - alone).abs().max() <= 1e-5
    assert torch.get_num_threads() == 2

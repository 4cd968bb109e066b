"""The evaluator's worker threads (:class:`aevb.workspace.Workers`): chunks computed by
threads of one PyTorch thread each, handed back in order, PyTorch's threads set back
whatever happens; and the estimate, with two threads, bit-identical to the estimate on
one thread, whatever the chunk size."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from helpers import SMALL_VQVAE, make_model
from torch.utils.flop_counter import FlopCounterMode

from aevb import RunConfig, build_model, workspace
from aevb.estimators import importance_weighted, naive_prior
from aevb.workspace import Workers

CPU = torch.device("cpu")
MAIN = threading.current_thread().name


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_chunks_run_on_threads_of_one_and_come_back_in_order(two_threads, monkeypatch):
    set_to, real = [], torch.set_num_threads
    monkeypatch.setattr(  # what each thread is set to, and by whom, before its first chunk
        torch,
        "set_num_threads",
        lambda n: set_to.append((threading.current_thread().name, n)) or real(n),
    )
    seen = []
    both = threading.Barrier(2, timeout=30)  # the first two items meet: two threads ran

    def fn(i: int) -> int:
        if i < 2:
            both.wait()
        time.sleep(0.002 * (i % 3))  # finish out of order
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return i * i

    with Workers(CPU) as w:
        assert w.workers_for(20) == 2
        assert torch.get_num_threads() == 1  # the caller too, while the block runs
        out = list(w.map(fn, range(20)))
    assert out == [i * i for i in range(20)]
    names = {name for name, _ in seen}
    assert len(names) == 2 and all(n.startswith("aevb-chunk") for n in names)
    assert {n for _, n in seen} == {1}
    assert {(name, 1) for name in names} <= set(set_to)  # set by the pool, not lazily
    assert set_to[-1] == (MAIN, 2) and torch.get_num_threads() == 2  # set back


def test_one_chunk_runs_in_the_caller_on_one_thread(two_threads):
    with Workers(CPU) as w:
        assert w.workers_for(1) == 1
        seen = list(
            w.map(lambda i: (threading.current_thread().name, torch.get_num_threads()), [0])
        )
    assert seen == [(MAIN, 1)]
    assert torch.get_num_threads() == 2


def test_no_more_workers_than_chunks():
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        all_three = threading.Barrier(3, timeout=30)  # three threads, or this times out

        def fn(i: int) -> tuple[int, str]:
            all_three.wait()
            return i, threading.current_thread().name

        with Workers(CPU) as w:
            assert w.workers_for(3) == 3 and w.workers_for(100) == 4
            out = list(w.map(fn, [2, 0, 1]))
        assert [i for i, _ in out] == [2, 0, 1] and len({name for _, name in out}) == 3
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(threads)


def test_errors_stop_the_work_and_set_the_threads_back(two_threads):
    started = []

    def fn(i: int) -> int:
        started.append(i)
        if i == 3:
            raise ValueError("chunk 3")
        return i

    with pytest.raises(ValueError, match="chunk 3"), Workers(CPU) as w:
        for _ in w.map(fn, range(100)):
            pass
    assert torch.get_num_threads() == 2
    assert len(started) <= 3 + 1 + 2 * 2  # only a few ran ahead; the rest cancelled

    for error in (KeyError, KeyboardInterrupt):  # the loop's body failing, or Ctrl-C
        started.clear()
        with pytest.raises(error), Workers(CPU) as w:
            for i in w.map(fn, range(4, 100)):
                if i == 6:
                    raise error(i)
        assert torch.get_num_threads() == 2
        assert len(started) <= 3 + 2 * 2

    def broken() -> object:
        raise RuntimeError("no state")

    with pytest.raises(RuntimeError, match="no state"), Workers(CPU) as w:
        list(w.map(lambda i: w.local(broken), range(10)))
    assert torch.get_num_threads() == 2


def test_local_state_is_one_per_worker_and_modes_are_the_callers(two_threads):
    made = []

    def fn(i: int) -> tuple[int, bool, bool]:
        state = w.local(lambda: made.append(threading.current_thread().name) or object())
        return id(state), torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    with Workers(CPU) as w, torch.inference_mode():
        out = list(w.map(fn, range(10)))
    assert len(made) == len(set(made)) <= 2 and len({o[0] for o in out}) == len(made)
    assert {o[1:] for o in out} == {(False, True)}
    with Workers(CPU) as w, torch.no_grad():
        assert {o[1:] for o in w.map(fn, range(4))} == {(False, False)}
    with Workers(CPU) as w:
        assert {o[1:] for o in w.map(fn, range(4))} == {(True, False)}


@pytest.mark.parametrize(
    "why",
    [
        "one thread",
        "switched off",
        "disabled",
        "autocast",
        "not a cpu",
        "device mode",
        "flop counter",
        "profiler",
    ],
)
def test_no_workers_where_they_do_not_apply(why, two_threads, monkeypatch):
    device = CPU
    if why == "one thread":
        torch.set_num_threads(1)
    elif why == "switched off":
        monkeypatch.setattr(workspace, "WORKERS", False)
    elif why == "not a cpu":
        device = torch.device("meta")
    threads = torch.get_num_threads()
    modes = {
        "autocast": torch.autocast("cpu"),
        "device mode": torch.device("cpu"),
        "flop counter": FlopCounterMode(display=False),
        "profiler": torch.profiler.profile(),
    }
    mode = modes.get(why, torch.autocast("cpu", enabled=False))
    with mode, Workers(device, enabled=why != "disabled") as w:
        assert w.workers_for(10) == 1
        names = list(w.map(lambda i: threading.current_thread().name, range(3)))
        assert torch.get_num_threads() == threads  # the operations keep the caller's threads
    assert names == [MAIN] * 3


def test_map_runs_inside_the_block_only(two_threads):
    w = Workers(CPU)
    with pytest.raises(RuntimeError, match="inside its `with` block"):
        list(w.map(lambda i: i, range(3)))
    assert torch.get_num_threads() == 2


def test_a_point_mass_keeps_every_thread(two_threads, monkeypatch):
    """VQ-VAE's q is a point mass: one sample, one chunk whatever the chunk size, so its
    estimate keeps PyTorch's threads."""
    model = make_model(**SMALL_VQVAE).eval()
    assert model.latent.noise.deterministic
    threads_seen = []
    real = type(model).log_likelihood_fn

    def spy(self, *a, **kw):
        threads_seen.append(torch.get_num_threads())
        return real(self, *a, **kw)

    monkeypatch.setattr(type(model), "log_likelihood_fn", spy)
    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0)).round()
    importance_weighted(model, x, 50)
    assert threads_seen == [2]


# Models at sizes where two threads split ATen's loops (a group's logits, 45 x 784 numbers,
# pass its grain of 32,768) and, with the limits lowered, oneDNN computes the matmuls.
MODELS = {
    "tanh-mlp": dict(hidden=(200, 130), latent_dim=6, activation="tanh"),
    "relu-mlp": dict(hidden=(150,), latent_dim=5, activation="relu"),
    "hvae": dict(
        model="hvae", hidden=(40, 30), latent_dims=(8, 4), hidden_top=(20,), activation="tanh"
    ),
    "gumbel": dict(model="gumbel", hidden=(30,), variables=3, categories=5),
    "vamp": dict(hidden=(30,), latent_dim=5, activation="tanh", prior="vamp", pseudo_inputs=7),
}


def _model(name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]:
    torch.manual_seed(0)
    base = dict(input_shape=(1, 28, 28), likelihood="bernoulli")
    if name == "cvae":
        model = build_model(
            RunConfig().replace(
                **base, model="cvae", hidden=(32,), latent_dim=3, **{"cvae.num_classes": 10}
            )
        ).eval()
        y = torch.arange(45) % 10
    else:
        model, y = make_model(**base, **MODELS[name]).eval(), None
    x = torch.rand(45, 1, 28, 28, generator=torch.Generator().manual_seed(1)).round()
    return model, x, y


def _on_one_thread(fn):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


KEYS = ("log_px_iw", "distortion", "rate", "gap")


@pytest.mark.parametrize("name", [*sorted(MODELS), "cvae"])
def test_the_estimate_with_workers_is_the_estimate_on_one_thread(name, two_threads, monkeypatch):
    monkeypatch.setattr(workspace, "ONEDNN_MIN_ROWS", 1)  # oneDNN where it works, as on MNIST
    monkeypatch.setattr(workspace, "ONEDNN_MIN_FEATURES", 1)
    model, x, y = _model(name)
    prepared, real = [], type(model).log_likelihood_fn

    def spy(self, *a, **kw):
        fn = real(self, *a, **kw)
        prepared.append((threading.current_thread().name, id(fn)))
        return fn

    monkeypatch.setattr(type(model), "log_likelihood_fn", spy)
    workers = importance_weighted(model, x, 100, chunk_size=45 * 4, y=y)
    assert torch.get_num_threads() == 2
    # one closure per worker (its buffers are its own), prepared in that worker
    assert (
        len(prepared) == 2
        and len({t for t, _ in prepared}) == 2
        and len({i for _, i in prepared}) == 2
    )
    assert all(t.startswith("aevb-chunk") for t, _ in prepared)
    one = _on_one_thread(lambda: importance_weighted(model, x, 100, chunk_size=45 * 4, y=y))
    for chunk in (45, 45 * 7, 1 << 20):  # 1 << 20: one chunk, in the caller
        r = importance_weighted(model, x, 100, chunk_size=chunk, y=y)
        for key in KEYS:
            assert torch.equal(r[key], workers[key]), (chunk, key)
    for key in KEYS:
        assert torch.equal(workers[key], one[key]), key
    monkeypatch.setattr(workspace, "WORKERS", False)  # each operation on both threads
    split = importance_weighted(model, x, 100, chunk_size=45 * 4, y=y)
    for key in KEYS:
        assert (split[key] - workers[key]).abs().max() <= 1e-4, key


@pytest.mark.parametrize("name", ["tanh-mlp", "hvae", "vamp", "cvae"])
def test_the_naive_estimate_with_workers_is_the_estimate_on_one_thread(
    name, two_threads, monkeypatch
):
    model, x, y = _model(name)
    scored_in, real = set(), type(model).log_likelihood

    def spy(self, *a, **kw):
        scored_in.add(threading.current_thread().name)
        return real(self, *a, **kw)

    monkeypatch.setattr(type(model), "log_likelihood", spy)
    workers = naive_prior(model, x, 300, chunk_size=45 * 8, y=y)
    assert len(scored_in) == 2 and all(n.startswith("aevb-chunk") for n in scored_in)
    monkeypatch.setattr(type(model), "log_likelihood", real)
    assert torch.get_num_threads() == 2
    one = _on_one_thread(lambda: naive_prior(model, x, 300, chunk_size=45 * 8, y=y))
    assert torch.equal(workers, one)


def test_no_workers_where_pytorch_lacks_a_private_function_asked(two_threads, monkeypatch):
    monkeypatch.delattr(torch._C, "_len_torch_dispatch_stack")
    with Workers(CPU) as w:
        assert w.workers_for(10) == 1 and torch.get_num_threads() == 2

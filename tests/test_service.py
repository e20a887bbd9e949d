"""The HTTP service for real: uvicorn on a free loopback port (in a thread), exercised over HTTP with httpx.

A tiny SASRec run on the synthetic log (string ids "i<k>") is exported with an exact flat index; answers
are checked against brute-force top-k of user_embedding @ item_embeddings over the real items."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("faiss")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from conftest import train_tiny_run  # noqa: E402

from t2diff.batch import Batch  # noqa: E402
from t2diff.checkpoint import build_from_checkpoint  # noqa: E402
from t2diff.cli import main  # noqa: E402

HOST = "127.0.0.1"  # loopback only


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("service")
    train_tiny_run(d)
    assert main(["export", str(d / "run"), "--out", str(d / "export")]) == 0
    return d / "run"


@pytest.fixture(scope="module")
def server(run: Path) -> Iterator[tuple[str, threading.Thread]]:
    """The real uvicorn server in a thread (no second torch import), on a loopback socket bound here."""
    from t2diff.retrieval.export import open_retriever
    from t2diff.retrieval.service import make_server

    sock = socket.socket()
    sock.bind((HOST, 0))
    url = f"http://{HOST}:{sock.getsockname()[1]}"
    srv = make_server(open_retriever(run, export=run.parent / "export"), HOST, log_level="warning")
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not srv.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        assert httpx.get(f"{url}/health").status_code == 200
        yield url, thread
    finally:
        srv.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def reference(run: Path):
    """Brute force: top-k of user_embedding @ item_embeddings over the real items (original ids)."""
    model, cfg, ds = build_from_checkpoint(run)
    with torch.no_grad():
        items = model.item_embeddings().detach()
    index = ds.item_index()

    def topk(history: list[str], k: int, exclude_seen: bool = False) -> list[tuple[str, float]]:
        h = [index[x] for x in history]
        with torch.no_grad():
            s = (model.user_embeddings(Batch.from_histories([h], cfg.data.max_len)) @ items.T)[0]
        s[0] = -torch.inf
        if exclude_seen:
            s[h] = -torch.inf
        top = torch.topk(s, k)
        return [(ds.item_ids[i], v) for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]

    return topk, ds


def _check(body: dict, expected: list[tuple[str, float]]) -> None:
    got = body["items"]
    assert [g["item_id"] for g in got] == [e[0] for e in expected]
    assert all(abs(g["score"] - e[1]) < 1e-4 for g, e in zip(got, expected, strict=True))
    assert all(a["score"] >= b["score"] for a, b in zip(got, got[1:], strict=False))


def test_health_and_docs(server, reference):
    url, _ = server
    _, ds = reference
    h = httpx.get(f"{url}/health").json()
    assert h["status"] == "ok" and h["model"] == "sasrec" and h["num_items"] == ds.num_items == 40
    assert h["index"] == "flat" and h["max_len"] == 12
    assert httpx.get(f"{url}/docs").status_code == 200
    assert "/recommend" in httpx.get(f"{url}/openapi.json").json()["paths"]


def test_recommend_equals_bruteforce(server, reference):
    url, _ = server
    topk, ds = reference
    hist = [ds.item_ids[i] for i in ds.history(7).tolist()]
    r = httpx.post(f"{url}/recommend", json={"history": hist, "k": 10})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "sasrec" and len(r.json()["items"]) == 10
    _check(r.json(), topk(hist, 10))

    r = httpx.post(f"{url}/recommend", json={"history": hist, "k": 10, "exclude_seen": True})
    _check(r.json(), topk(hist, 10, exclude_seen=True))
    assert not set(hist) & {x["item_id"] for x in r.json()["items"]}

    # timestamps are accepted (SASRec ignores them) and k = num_items returns the whole catalogue
    ts = [1_600_000_000 + 60 * j for j in range(3)]
    r = httpx.post(f"{url}/recommend", json={"history": hist[:3], "timestamps": ts, "k": 40})
    assert r.status_code == 200, r.text
    _check(r.json(), topk(hist[:3], 40))


@pytest.mark.parametrize(("body", "needle"), [
    ({"history": ["i1", "nope", "i2", 17], "k": 5}, "unknown item id(s) 'nope', 17"),
    ({"history": [], "k": 5}, "history is empty"),
    ({"history": ["i1"], "k": 0}, "k must be an integer between 1 and 40"),
    ({"history": ["i1"], "k": 41}, "k must be an integer between 1 and 40"),
    ({"history": ["i1"], "k": "5"}, "k: Input should be a valid integer"),
    ({"history": ["i1", "i2"], "timestamps": [1], "k": 5}, "timestamps has 1 entries but history has 2"),
    ({"history": ["i1", 1.5, None], "k": 5}, "history[1]: must be a string or an integer, got 1.5"),
    ({"history": "i1 i2", "k": 5}, "history: Input should be a valid list"),
    ({"k": 5}, "history: Field required"),
    ({"history": ["i1"], "k": 5, "exclude": True}, "exclude: is not a known field"),
    ({"history": ["i1"], "timestamps": [-5], "k": 5}, "timestamps must be non-negative"),
    ('{"history": ["i1", ', "request body is not valid JSON"),
    ("[1, 2]", "request body must be a JSON object"),
    ("", "request body must be a JSON object"),
])
def test_bad_requests_are_clear_422s(server, body, needle):
    url, thread = server
    if isinstance(body, str):
        r = httpx.post(f"{url}/recommend", content=body, headers={"content-type": "application/json"})
    else:
        r = httpx.post(f"{url}/recommend", json=body)
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"], r.json()
    if "unknown item" in needle:
        assert r.json()["unknown_item_ids"] == ["nope", 17]
    assert thread.is_alive() and httpx.get(f"{url}/health").status_code == 200  # the service lives on


def test_200_concurrent_requests(server, reference):
    url, _ = server
    topk, ds = reference
    hists = [[ds.item_ids[i] for i in ds.history(u).tolist()][-(3 + u % 9):] for u in range(1, 21)]
    expected = [topk(h, 20) for h in hists]

    async def go() -> list[httpx.Response]:
        sem = asyncio.Semaphore(32)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            async def one(i: int) -> httpx.Response:
                async with sem:
                    return await client.post("/recommend", json={"history": hists[i % 20], "k": 20})
            return await asyncio.gather(*(one(i) for i in range(200)))

    rs = asyncio.run(go())
    assert [r.status_code for r in rs] == [200] * 200
    for i, r in enumerate(rs):  # no cross-talk between concurrent requests
        _check(r.json(), expected[i % 20])


def test_model_failure_is_a_500_and_the_app_lives(run, monkeypatch):
    """In-process (ASGI transport) so the model can be broken on purpose."""
    from t2diff.retrieval.export import open_retriever
    from t2diff.retrieval.service import create_app

    retriever = open_retriever(run, export=run.parent / "export")
    app = create_app(retriever)
    req = {"history": ["i1"], "k": 3}

    def boom(*a, **k):
        raise RuntimeError("simulated failure")

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            ok = await client.post("/recommend", json=req)
            monkeypatch.setattr(retriever.tower, "embed", boom)
            bad = await client.post("/recommend", json=req)
            monkeypatch.undo()
            return [ok, bad, await client.post("/recommend", json=req)]

    ok, bad, again = asyncio.run(go())
    assert ok.status_code == 200 and again.json() == ok.json()
    assert bad.status_code == 500 and bad.json()["error"] == "model error: RuntimeError: simulated failure"


def test_serve_command_wiring(run, monkeypatch, capsys):
    """`t2diff serve` loads checkpoint + export and hands them to serve() (the server itself is tested above)."""
    import t2diff.retrieval.service as service

    calls = []
    monkeypatch.setattr(service, "serve", lambda *a: calls.append(a))
    assert main(["serve", str(run), "--export", str(run.parent / "export"), "--port", "8123", "--threads", "3",
                 "--faiss-threads", "2"]) == 0
    retriever, host, port, _, access_log, threads, faiss_threads = calls[0]
    assert (host, port, access_log, threads, faiss_threads) == (HOST, 8123, False, 3, 2)
    assert retriever.index.kind == "flat" and retriever.meta["export"] == str(run.parent / "export")
    assert main(["serve", str(run), "--export", str(run)]) == 2
    assert "is not an export folder" in capsys.readouterr().err
    assert main(["serve", str(run), "--faiss-threads", "0"]) == 2
    assert "--faiss-threads" in capsys.readouterr().err

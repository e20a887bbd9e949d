"""The HTTP service for real: uvicorn on a free loopback port (in a thread), exercised over HTTP with httpx.

A tiny SASRec run on the synthetic log (string ids "i<k>") is exported with an exact flat index; answers
are checked against brute-force top-k of user_embedding @ item_embeddings over the real items."""

from __future__ import annotations

import asyncio
import contextlib
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
from t2diff.cli import main  # noqa: E402
from t2diff.run import build_from_checkpoint  # noqa: E402

HOST = "127.0.0.1"  # loopback only


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("service")
    train_tiny_run(d)
    assert main(["export", str(d / "run"), "--out", str(d / "export")]) == 0
    return d / "run"


@contextlib.contextmanager
def _running(retriever, **kw) -> Iterator[tuple[str, threading.Thread, object]]:
    """The real uvicorn server in a thread (no second torch import), on a loopback socket bound here."""
    from t2diff.retrieval.service import make_server

    sock = socket.socket()
    sock.bind((HOST, 0))
    url = f"http://{HOST}:{sock.getsockname()[1]}"
    srv = make_server(retriever, HOST, log_level="warning", **kw)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not srv.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        assert httpx.get(f"{url}/health").status_code == 200
        yield url, thread, srv.config.app
    finally:
        srv.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def server(run: Path) -> Iterator[tuple[str, threading.Thread]]:
    from t2diff.retrieval.export import open_retriever

    with _running(open_retriever(run, export=run.parent / "export")) as (url, thread, _):
        yield url, thread


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
    retriever, host, port, _, access_log, threads, faiss_threads, limits, batching = calls[0]
    assert (host, port, access_log, threads, faiss_threads) == (HOST, 8123, False, 3, 2)
    assert limits.max_body_bytes == 4 * 1024 * 1024 and batching.max_batch == 64
    assert retriever.index.kind == "flat" and retriever.meta["export"] == str(run.parent / "export")
    assert main(["serve", str(run), "--export", str(run)]) == 2
    assert "is not an export folder" in capsys.readouterr().err
    assert main(["serve", str(run), "--faiss-threads", "0"]) == 2
    assert "--faiss-threads" in capsys.readouterr().err
    assert main(["serve", str(run), "--max-batch", "0"]) == 2
    assert "max_batch must be >= 1" in capsys.readouterr().err
    assert main(["serve", str(run), "--request-timeout", "0"]) == 2
    assert "request_timeout_s must be > 0" in capsys.readouterr().err


def _raw_http(url: str, head: bytes, body_chunks: list[bytes] = ()) -> tuple[int, dict]:
    """Send a request byte for byte on a plain socket (to control Content-Length and chunking), read the
    status line and JSON body of the answer."""
    import json

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head)
        try:
            for c in body_chunks:
                s.sendall(c)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole body was sent: that is the point
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
                [h for h in data.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1]):
            got = s.recv(65536)
            if not got:
                break
            data += got
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1])


def test_oversize_bodies_are_413_before_parsing(run):
    from t2diff.retrieval.export import open_retriever
    from t2diff.retrieval.limits import ServiceLimits

    retriever = open_retriever(run, export=run.parent / "export")
    with _running(retriever, limits=ServiceLimits(max_body_bytes=10_000, request_timeout_s=5)) as (url, thread, _):
        # a declared 50 MB body: refused from the header alone, nothing is read
        head = (b"POST /recommend HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
                b"content-length: 50000000\r\n\r\n")
        status, body = _raw_http(url, head)
        assert status == 413 and "larger than the limit of 10000 bytes" in body["error"]
        # a chunked body with no length: refused while streaming, once it passes the limit
        head = (b"POST /recommend HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
                b"transfer-encoding: chunked\r\n\r\n")
        piece = b'{"history": [' + b'"i1", ' * 600
        chunks = [f"{len(piece):x}\r\n".encode() + piece + b"\r\n"] * 5 + [b"0\r\n\r\n"]
        status, body = _raw_http(url, head, chunks)
        assert status == 413 and "larger than the limit" in body["error"]
        # under the limit, chunked or not, requests are answered as usual
        ok = httpx.post(f"{url}/recommend", json={"history": ["i1"] * 1000, "k": 3})
        assert ok.status_code == 200, ok.text
        assert thread.is_alive()


def test_request_time_limit(run, monkeypatch):
    from t2diff.retrieval.export import open_retriever
    from t2diff.retrieval.limits import ServiceLimits

    retriever = open_retriever(run, export=run.parent / "export")
    real = retriever.tower.embed

    def slow(*a, **k):
        time.sleep(1.5)
        return real(*a, **k)

    with _running(retriever, limits=ServiceLimits(request_timeout_s=0.5)) as (url, thread, _):
        # a body that never completes: 408 once the limit has passed
        head = (b"POST /recommend HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\n"
                b"content-length: 100\r\n\r\n{\"history\": [")
        t0 = time.monotonic()
        status, body = _raw_http(url, head)
        assert status == 408 and "not received within 0.5 s" in body["error"]
        assert time.monotonic() - t0 < 5
        # a computation slower than the limit: 503 at the limit, not when the model is done
        monkeypatch.setattr(retriever.tower, "embed", slow)
        t0 = time.monotonic()
        r = httpx.post(f"{url}/recommend", json={"history": ["i1"], "k": 3})
        assert r.status_code == 503 and "time limit of 0.5 s" in r.json()["error"]
        assert time.monotonic() - t0 < 1.4
        monkeypatch.undo()
        time.sleep(1.5)  # the abandoned computation finishes in the background
        assert httpx.post(f"{url}/recommend", json={"history": ["i1"], "k": 3}).status_code == 200


def test_micro_batched_answers_equal_one_at_a_time(run, reference):
    """64 different users at once: the micro-batcher computes them in few batches, and every answer equals
    the unbatched service's (each request alone) and the brute-force reference."""
    from t2diff.retrieval.batching import BatchingConfig
    from t2diff.retrieval.export import open_retriever

    topk, ds = reference
    # 64 different histories: every user once (60), four of them cut shorter again
    cuts = [(u, 2 + u % 11) for u in range(1, ds.num_users + 1)] + [(u, 1) for u in range(1, 65 - ds.num_users)]
    bodies = [{"history": [ds.item_ids[i] for i in ds.history(u).tolist()][-n:], "k": 5 + u % 7,
               "exclude_seen": bool(u % 2)} for u, n in cuts]
    assert len(bodies) == 64 and len({str(b) for b in bodies}) == 64

    async def fire(url: str) -> list[dict]:
        async with httpx.AsyncClient(base_url=url, timeout=60,
                                     limits=httpx.Limits(max_connections=64)) as client:
            rs = await asyncio.gather(*(client.post("/recommend", json=b) for b in bodies))
        assert [r.status_code for r in rs] == [200] * 64
        return [r.json() for r in rs]

    retriever = open_retriever(run, export=run.parent / "export")
    with _running(retriever, batching=BatchingConfig(max_batch=64, max_wait_ms=20)) as (url, _, app):
        batched = asyncio.run(fire(url))
        runner = app.state.runner
        assert runner.jobs == 64 and runner.batches < 32  # requests really shared batches
    with _running(retriever, batching=BatchingConfig(max_batch=1)) as (url, _, app):
        alone = asyncio.run(fire(url))
        assert not hasattr(app.state.runner, "batches")
    for b, a, body in zip(batched, alone, bodies, strict=True):
        assert [x["item_id"] for x in b["items"]] == [x["item_id"] for x in a["items"]]
        assert all(abs(x["score"] - y["score"]) < 1e-5 for x, y in zip(b["items"], a["items"], strict=True))
        _check(b, topk(body["history"], body["k"], body["exclude_seen"]))

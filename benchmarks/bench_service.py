"""End-to-end latency and throughput of the HTTP matching service (`t2diff serve`) on a real ML-1M model.

Starts `t2diff serve` in a subprocess on a free 127.0.0.1 port, once per --max-batch setting (1 = each
request computed alone, the behaviour without micro-batching; 64 = concurrent requests share a user-tower
batch), and sends POST /recommend requests whose histories are sampled from real users (a random user, a
random cut point, the last --history-len behaviours before it). For each setting it reports client-measured
latency p50/p90/p99 and requests/s: sequential (one keep-alive connection, one request at a time) and at each
--concurrency level (that many connections, each sending its next request when the last one is answered).
The load generator is a minimal HTTP/1.1 keep-alive client on raw asyncio sockets with pre-encoded requests,
so that the client, which shares the machine's cores with the server, costs as little CPU as possible. It
also times the two server-side stages in-process (user tower forward, index search) on the same histories.
Writes ``<out>/<name>.json`` and ``<out>/<name>.md`` (``--name``, default ``service``), with the command, commit
and machine (t2diff.provenance).

    nice -n 5 .venv/bin/python benchmarks/bench_service.py --run runs/sasrec-ml1m-loo
    .venv/bin/python benchmarks/bench_service.py --requests 100 --out /tmp/svc   # quick smoke run

Targets (issue 11, 2-core machine, 64 in flight, micro-batching on): SASRec >= 500 requests/s and p99 <= 100 ms;
T2Diff p99 <= 10x SASRec's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from t2diff.provenance import provenance, write_json, write_markdown

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, help="run dir or .pt (default: runs/sasrec-ml1m-loo, the main job's run)")
    p.add_argument("--export", type=Path, help="export folder (default: a flat export made in a temp folder)")
    p.add_argument("--requests", type=int, default=1000, help="requests per sequential measurement")
    p.add_argument("--concurrent-requests", type=int, default=200, help="requests per concurrent measurement")
    p.add_argument("--repeats", type=int, default=3, help="concurrent measurements per level (latencies pooled)")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--concurrency", default="64", help="comma-separated in-flight levels")
    p.add_argument("--max-batch", default="1,64", help="comma-separated `serve --max-batch` settings")
    p.add_argument("--max-wait-ms", type=float, default=1.0, help="`serve --max-wait-ms`")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--history-len", type=int, default=50, help="behaviours sent per request (at most)")
    p.add_argument("--exclude-seen", action="store_true")
    p.add_argument("--server-threads", type=int, help="`t2diff serve --threads` (default: the server's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--name", default="service", help="report file stem: <out>/<name>.json and .md")
    return p.parse_args(argv)


def _pct(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p90": round(float(np.percentile(a, 90)), 3),
            "p99": round(float(np.percentile(a, 99)), 3), "mean": round(float(a.mean()), 3), "n": int(a.size)}


def sample_histories(ds: Any, n: int, length: int, seed: int) -> list[list[str]]:
    """n histories of real users: a random user, a random cut j >= 1, the last ``length`` items before j."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1, ds.num_users + 1, size=n)
    out = []
    for u in users:
        h = ds.history(int(u))
        j = int(rng.integers(1, len(h) + 1))
        out.append([ds.item_ids[i] for i in h[max(0, j - length): j]])
    return out


def start_server(source: Path, export: Path | None, extra: list[str]) -> tuple[subprocess.Popen, str, Path]:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    log = Path(tempfile.mkstemp(prefix="bench_service_", suffix=".log")[1])
    cmd = [sys.executable, "-m", "t2diff.cli", "serve", str(source), "--host", HOST, "--port", str(port),
           "--log-level", "warning"] + (["--export", str(export)] if export is not None else []) + extra
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return proc, url, log
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server not up after 300 s: {log.read_text()}")


def encode(url: str, body: dict) -> bytes:
    host = url.removeprefix("http://")
    data = json.dumps(body).encode()
    return (f"POST /recommend HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(data)}\r\n\r\n").encode() + data


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> int:
    """One request on a keep-alive connection -> the status code (the body is read and dropped)."""
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(x.split(b":", 1)[1]) for x in lines if x.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    return int(lines[0].split(b" ", 2)[1])


def load_test(url: str, reqs: list[bytes], level: int) -> tuple[list[float], int, float]:
    """``level`` connections, each sending its next request when its last one is answered (a closed loop, so
    ``level`` requests are in flight) -> (latencies ms, errors, wall seconds)."""
    async def go() -> tuple[list[float], int, float]:
        host, port = url.removeprefix("http://").split(":")
        conns = [await asyncio.open_connection(host, int(port)) for _ in range(level)]
        lat: list[float] = []
        errors = 0
        todo = list(reversed(reqs))

        async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal errors
            while todo:
                req = todo.pop()
                t0 = time.perf_counter()
                status = await _exchange(reader, writer, req)
                lat.append((time.perf_counter() - t0) * 1e3)
                errors += status != 200

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(r, w) for r, w in conns))
        wall = time.perf_counter() - t0
        for _, w in conns:
            w.close()
        return lat, errors, wall
    return asyncio.run(go())


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc): the server's cost without the waiting that a
    shared, overloaded machine adds to wall-clock latency."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stages(retriever: Any, hists: list[list[str]], k: int, exclude_seen: bool) -> dict[str, Any]:
    """Server-side work per request, in-process, one thread: user tower, then index search."""
    import faiss
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    tower, index = retriever.tower, retriever.index
    t_tower, t_index, cpu_tower, cpu_index = [], [], 0.0, 0.0
    for h in hists:
        internal, _ = tower.to_internal(h)
        t0, c0 = time.perf_counter(), time.thread_time()
        q = tower.embed([internal])
        t1, c1 = time.perf_counter(), time.thread_time()
        index.search(q, k, [set(internal)] if exclude_seen else None)
        t2, c2 = time.perf_counter(), time.thread_time()
        t_tower.append((t1 - t0) * 1e3)
        t_index.append((t2 - t1) * 1e3)
        cpu_tower, cpu_index = cpu_tower + c1 - c0, cpu_index + c2 - c1
    n = len(hists)
    return {"user_tower_ms": {**_pct(t_tower), "cpu_mean": round(cpu_tower * 1e3 / n, 3)},
            "index_search_ms": {**_pct(t_index), "cpu_mean": round(cpu_index * 1e3 / n, 3)}}


def _epochs(run: Path) -> int | None:
    f = run / "metrics.jsonl"
    return len(f.read_text().splitlines()) if f.exists() else None


def measure(url: str, pid: int, seq: list[bytes], conc: list[bytes], levels: list[int], repeats: int
            ) -> dict[str, Any]:
    """Sequential and concurrent rows for one running server."""
    rows: dict[str, Any] = {}
    c0, p0 = proc_cpu_s(pid), time.process_time()
    lat, err, wall = load_test(url, seq, 1)
    rows["sequential"] = {"latency_ms": _pct(lat), "errors": err, "throughput_rps": round(len(lat) / wall, 1),
                          "server_cpu_ms_per_request": round((proc_cpu_s(pid) - c0) * 1e3 / len(lat), 3),
                          "client_cpu_ms_per_request": round((time.process_time() - p0) * 1e3 / len(lat), 3)}
    for lv in levels:
        lats: list[float] = []
        rps: list[float] = []
        errors = 0
        c0 = proc_cpu_s(pid)
        for _ in range(repeats):
            lat, err, wall = load_test(url, conc, lv)
            lats += lat
            rps.append(len(lat) / wall)
            errors += err
        rows[f"{lv} in flight"] = {"latency_ms": _pct(lats), "errors": errors,
                                   "throughput_rps": round(float(np.median(rps)), 1),
                                   "throughput_rps_repeats": [round(x, 1) for x in rps],
                                   "server_cpu_ms_per_request": round((proc_cpu_s(pid) - c0) * 1e3 / len(lats), 3)}
    return rows


def main(argv: list[str] | None = None) -> int:
    prov = provenance(argv, __file__)  # before anything is written: the outputs are tracked files
    args = parse_args(argv)
    from t2diff.retrieval.export import export_run, open_retriever

    run = args.run or REPO / "runs" / "sasrec-ml1m-loo"
    tmp = None
    export = args.export
    if export is None:
        # snapshot the checkpoint into the export: a run still training may rewrite best.pt meanwhile
        tmp = tempfile.TemporaryDirectory(prefix="bench_service_")
        export = Path(tmp.name) / "export"
        export_run(run, export, copy_checkpoint=True, log=lambda s: None)
        source, server_export = export, None
    else:
        source, server_export = run, export
    retriever = open_retriever(source, server_export)
    exp_meta = json.loads((export / "export.json").read_text())  # the original checkpoint path (not the copy)
    ds = retriever.tower.ds
    levels = [int(x) for x in args.concurrency.split(",") if x]
    batches = [int(x) for x in args.max_batch.split(",") if x]
    n = args.warmup + max(args.requests, args.concurrent_requests)
    hists = sample_histories(ds, n, args.history_len, args.seed)
    bodies = [{"history": h, "k": args.k, "exclude_seen": args.exclude_seen} for h in hists]
    load_before = os.getloadavg()

    settings: dict[str, Any] = {}
    health: dict[str, Any] = {}
    for mb in batches:
        extra = ["--max-batch", str(mb), "--max-wait-ms", str(args.max_wait_ms)]
        extra += ["--threads", str(args.server_threads)] if args.server_threads else []
        proc, url, _log = start_server(source, server_export, extra)
        try:
            health = httpx.get(f"{url}/health").json()
            reqs = [encode(url, b) for b in bodies]
            warm, rest = reqs[: args.warmup], reqs[args.warmup:]
            load_test(url, warm, max(levels))  # warm-up: first forwards, allocator, connection setup
            settings[f"max_batch={mb}"] = measure(url, proc.pid, rest[: args.requests],
                                                  rest[: args.concurrent_requests], levels, args.repeats)
        finally:
            proc.terminate()
            proc.wait(30)
    stage = stages(retriever, hists[args.warmup: args.warmup + min(500, args.requests)], args.k, args.exclude_seen)
    load_after = os.getloadavg()

    res = {
        "run": str(run), "checkpoint": exp_meta["checkpoint"]["path"], "checkpoint_sha256": retriever.meta["sha256"],
        "run_epochs_logged": _epochs(run) if run.is_dir() else None, "model": health["model"],
        "index": health["index"], "num_items": health["num_items"], "dim": health["dim"],
        "max_len": health["max_len"], "server_threads": args.server_threads or "default: max(2, CPUs)",
        "max_wait_ms": args.max_wait_ms, "k": args.k, "exclude_seen": args.exclude_seen,
        "history_len": args.history_len, "requests": args.requests, "concurrent_requests": args.concurrent_requests,
        "repeats": args.repeats, "warmup": args.warmup,
        "settings": settings,
        "server_stages_in_process": stage,
        "load": {"loadavg_before": [round(x, 2) for x in load_before],
                 "loadavg_after": [round(x, 2) for x in load_after],
                 "note": ("the client runs on the same cores as the server" if load_before[0] < 1.5 else
                          "the cores were shared with other jobs (load average above); the client shares them too")},
    }
    write_json(args.out / f"{args.name}.json", res, prov)
    write_markdown(args.out / f"{args.name}.md", render_md(res), prov)
    print(render_md(res))
    if tmp is not None:
        tmp.cleanup()
    return 0 if all(v["errors"] == 0 for rows in settings.values() for v in rows.values()) else 1


def render_md(r: dict[str, Any]) -> str:
    lines = [
        "# Matching service latency and throughput (end to end, HTTP)", "",
        f"Model `{r['model']}` from `{r['run']}` (checkpoint snapshot `{r['checkpoint_sha256'][:12]}`, "
        + (f"{r['run_epochs_logged']} epoch(s) logged when measured; " if r["run_epochs_logged"] else "")
        + "latency does not depend on training); "
        f"{r['index']} inner-product index over {r['num_items']} "
        f"items (dim {r['dim']}); k = {r['k']}, exclude_seen = {r['exclude_seen']}; histories of up to "
        f"{r['history_len']} items sampled from real ML-1M users (model window {r['max_len']}); "
        f"sequential rows: {r['requests']} requests; concurrent rows: {r['concurrent_requests']} requests, "
        f"{r['repeats']} times (latencies pooled, requests/s the median); {r['warmup']} warm-up requests first. "
        f"`max_batch=1`: each request computed alone (no micro-batching); `max_batch=64`: micro-batching, "
        f"max wait {r['max_wait_ms']} ms.", "",
        "| serve | load | p50 ms | p90 ms | p99 ms | mean ms | requests/s | server CPU ms/req | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for setting, rows in r["settings"].items():
        for name, v in rows.items():
            m = v["latency_ms"]
            lines.append(f"| {setting} | {name} | {m['p50']} | {m['p90']} | {m['p99']} | {m['mean']} | "
                         f"{v['throughput_rps']} | {v['server_cpu_ms_per_request']} | {v['errors']} |")
    s = r["server_stages_in_process"]
    client = [rows["sequential"]["client_cpu_ms_per_request"] for rows in r["settings"].values()]
    lines += [
        "", "Server-side stages, in-process, one thread, one history at a time (same histories):", "",
        "| stage | p50 ms | p99 ms | CPU ms (mean) |", "|---|---|---|---|",
        f"| user tower (Batch + forward, no_grad) | {s['user_tower_ms']['p50']} | {s['user_tower_ms']['p99']} | "
        f"{s['user_tower_ms']['cpu_mean']} |",
        f"| index search (k = {r['k']}) | {s['index_search_ms']['p50']} | {s['index_search_ms']['p99']} | "
        f"{s['index_search_ms']['cpu_mean']} |",
        "",
        f"Load average {r['load']['loadavg_before']} before, {r['load']['loadavg_after']} after (machine: see the "
        f"header). {r['load']['note']}: under concurrency, wall-clock latency includes waiting for a core; the CPU "
        "column "
        f"(server process CPU time per request, client excluded: the client used {client} ms/req sequential) is "
        "what the service itself costs.", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

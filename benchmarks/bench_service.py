"""End-to-end latency of the HTTP matching service (`t2diff serve`) on a real ML-1M model.

Starts `t2diff serve RUN --export EXPORT` in a subprocess on a free 127.0.0.1 port, sends POST /recommend
requests whose histories are sampled from real users (a random user, a random cut point, the last
--history-len behaviours before it), and reports client-measured latency p50/p90/p99:
sequential (one keep-alive connection, one request at a time) and at each --concurrency level
(asyncio + httpx, that many requests in flight). It also times the two server-side stages in-process
(user tower forward, index search) on the same histories, so the HTTP/JSON overhead is visible.
Writes ``<out>/<name>.json`` and ``<out>/<name>.md`` (``--name``, default ``service``).

    nice -n 5 .venv/bin/python benchmarks/bench_service.py                   # runs/sasrec-loo, else runs/serve-sasrec
    .venv/bin/python benchmarks/bench_service.py --requests 100 --out /tmp/svc   # quick smoke run

The client runs on the same machine as the server and competes with it for the cores: numbers are an
upper bound on what the server alone costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, help="run dir (default: runs/sasrec-loo if it has best.pt, else "
                   "runs/serve-sasrec)")
    p.add_argument("--export", type=Path, help="export folder (default: a flat export made in a temp folder)")
    p.add_argument("--requests", type=int, default=1000, help="requests per measurement")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--concurrency", default="4,16", help="comma-separated in-flight levels")
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


def start_server(source: Path, export: Path | None, threads: int | None = None
                 ) -> tuple[subprocess.Popen, str, Path]:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    log = Path(tempfile.mkstemp(prefix="bench_service_", suffix=".log")[1])
    cmd = [sys.executable, "-m", "t2diff.cli", "serve", str(source), "--host", HOST, "--port", str(port),
           "--log-level", "warning"] + (["--export", str(export)] if export is not None else []) + (
               ["--threads", str(threads)] if threads else [])
    proc = subprocess.Popen(cmd,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
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


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc): the server's cost without the waiting that a
    shared, overloaded machine adds to wall-clock latency."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sequential(url: str, bodies: list[dict]) -> tuple[list[float], int]:
    lat, errors = [], 0
    with httpx.Client(base_url=url, timeout=60) as c:
        for b in bodies:
            t0 = time.perf_counter()
            r = c.post("/recommend", json=b)
            lat.append((time.perf_counter() - t0) * 1e3)
            errors += r.status_code != 200
    return lat, errors


def concurrent(url: str, bodies: list[dict], level: int) -> tuple[list[float], int, float]:
    async def go() -> tuple[list[float], int, float]:
        lat: list[float] = []
        errors = 0
        queue = list(reversed(bodies))
        limits = httpx.Limits(max_connections=level, max_keepalive_connections=level)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
            async def worker() -> None:
                nonlocal errors
                while queue:
                    b = queue.pop()
                    t0 = time.perf_counter()
                    r = await c.post("/recommend", json=b)
                    lat.append((time.perf_counter() - t0) * 1e3)
                    errors += r.status_code != 200
            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(level)))
            return lat, errors, time.perf_counter() - t0
    return asyncio.run(go())


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from t2diff.retrieval.export import export_run, open_retriever

    run = args.run
    if run is None:
        run = REPO / "runs" / "sasrec-loo"
        if not (run / "best.pt").exists():
            run = REPO / "runs" / "serve-sasrec"
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
    hists = sample_histories(ds, args.requests + args.warmup, args.history_len, args.seed)
    bodies = [{"history": h, "k": args.k, "exclude_seen": args.exclude_seen} for h in hists]
    warm, bodies = bodies[: args.warmup], bodies[args.warmup:]
    load_before = os.getloadavg()

    proc, url, log = start_server(source, server_export, args.server_threads)
    try:
        health = httpx.get(f"{url}/health").json()
        sequential(url, warm)
        c0, p0 = proc_cpu_s(proc.pid), time.process_time()
        seq_lat, seq_err = sequential(url, bodies)
        seq_cpu = {"server_cpu_ms_per_request": round((proc_cpu_s(proc.pid) - c0) * 1e3 / len(bodies), 3),
                   "client_cpu_ms_per_request": round((time.process_time() - p0) * 1e3 / len(bodies), 3)}
        conc = {}
        for lv in levels:
            c0 = proc_cpu_s(proc.pid)
            lat, err, wall = concurrent(url, bodies, lv)
            conc[str(lv)] = {"latency_ms": _pct(lat), "errors": err, "throughput_rps": round(len(lat) / wall, 1),
                             "server_cpu_ms_per_request": round((proc_cpu_s(proc.pid) - c0) * 1e3 / len(lat), 3)}
    finally:
        proc.terminate()
        proc.wait(30)
    stage = stages(retriever, hists[args.warmup: args.warmup + min(500, args.requests)], args.k, args.exclude_seen)
    load_after = os.getloadavg()

    cmd = ".venv/bin/python benchmarks/bench_service.py " + " ".join(shlex.quote(a) for a in
                                                                             (argv or sys.argv[1:]))
    res = {
        "command": cmd.strip(),
        "run": str(run), "checkpoint": exp_meta["checkpoint"]["path"], "checkpoint_sha256": retriever.meta["sha256"],
        "run_epochs_logged": _epochs(run), "model": health["model"],
        "index": health["index"], "num_items": health["num_items"], "dim": health["dim"],
        "max_len": health["max_len"], "server_threads": args.server_threads or "default: max(2, CPUs)",
        "k": args.k, "exclude_seen": args.exclude_seen,
        "history_len": args.history_len, "requests": len(bodies), "warmup": args.warmup,
        "sequential": {"latency_ms": _pct(seq_lat), "errors": seq_err,
                       "throughput_rps": round(len(seq_lat) / (sum(seq_lat) / 1e3), 1), **seq_cpu},
        "concurrent": conc,
        "server_stages_in_process": stage,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in load_after],
                    "note": ("the client runs on the same cores as the server" if load_before[0] < 1.5 else
                             "the cores were shared with other jobs (load average above); the client shares them "
                             "too")},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(render_md(res))
    print(render_md(res))
    if tmp is not None:
        tmp.cleanup()
    return 0 if seq_err == 0 and all(v["errors"] == 0 for v in conc.values()) else 1


def render_md(r: dict[str, Any]) -> str:
    rows = [("sequential (1 in flight)", r["sequential"])] + [(f"{lv} in flight", v)
                                                            for lv, v in r["concurrent"].items()]
    lines = [
        "# Matching service latency (end to end, HTTP)", "",
        f"Command: `{r['command']}`", "",
        f"Model `{r['model']}` from `{r['run']}` (checkpoint snapshot `{r['checkpoint_sha256'][:12]}`, "
        + (f"{r['run_epochs_logged']} epoch(s) logged when measured; " if r["run_epochs_logged"] else "")
        + "latency does not depend on training); "
        f"{r['index']} inner-product index over {r['num_items']} "
        f"items (dim {r['dim']}); k = {r['k']}, exclude_seen = {r['exclude_seen']}; histories of up to "
        f"{r['history_len']} items sampled from real ML-1M users (model window {r['max_len']}); "
        f"{r['requests']} measured requests per row after {r['warmup']} warm-up requests.", "",
        "| load | p50 ms | p90 ms | p99 ms | mean ms | throughput req/s | server CPU ms/req | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, v in rows:
        m = v["latency_ms"]
        lines.append(f"| {name} | {m['p50']} | {m['p90']} | {m['p99']} | {m['mean']} | {v['throughput_rps']} | "
                     f"{v['server_cpu_ms_per_request']} | {v['errors']} |")
    s = r["server_stages_in_process"]
    lines += [
        "", "Server-side stages, in-process, one thread (same histories):", "",
        "| stage | p50 ms | p99 ms | CPU ms (mean) |", "|---|---|---|---|",
        f"| user tower (Batch + forward, no_grad) | {s['user_tower_ms']['p50']} | {s['user_tower_ms']['p99']} | "
        f"{s['user_tower_ms']['cpu_mean']} |",
        f"| index search (k = {r['k']}) | {s['index_search_ms']['p50']} | {s['index_search_ms']['p99']} | "
        f"{s['index_search_ms']['cpu_mean']} |",
        "",
        f"Machine: {r['machine']['cpus']} CPUs, {r['machine']['platform']}, Python {r['machine']['python']}; "
        f"load average {r['machine']['loadavg_before']} before, {r['machine']['loadavg_after']} after. "
        f"{r['machine']['note']}: under concurrency, wall-clock latency includes waiting for a core; the CPU columns "
        f"(server process CPU time per request, client excluded: {r['sequential']['client_cpu_ms_per_request']} "
        "ms/req sequential) are what the service itself costs.", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

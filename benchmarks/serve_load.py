"""Bounded load test of `tuneloop serve` on loopback with the real bundled model.

    .venv/bin/python benchmarks/serve_load.py [--clients 50] [--duration 60] [--max-tokens 8]
                                              [--run RUN] [--threads 1] [--precision bf16] [--json]
                                              [--servers 2] [--store postgresql://...]

Starts the server in a subprocess (`python -m tuneloop serve`) on 127.0.0.1 with a fresh
registry and traffic store in a temp folder. With --run, that run folder is registered as v1
and served as the champion (an adapter over SmolLM2-135M); without it the base model is
served. N asyncio clients (httpx) then send chat completions back to back for the given
duration, each a real customer message (banking77 test split). Afterwards it checks that no
request failed and that the traffic log holds exactly one row per answered request, and
prints requests sent, answered and logged, latency percentiles and throughput. Exit code 1
when a check fails.

--servers N starts N server processes that share one traffic store (clients take turns);
--store URL makes that store a given database, e.g. the PostgreSQL that `.ci/postgres.sh`
starts (rows already there are not counted: only the ids of this run's answers are looked up).

Loopback only, by construction: the server binds 127.0.0.1 and the clients call it there.

Measured (2-core CPU shared with four other sessions, 1-min load average ~9; SmolLM2-135M + a
LoRA adapter via --run; defaults otherwise): 50 clients x 60 s, 194 requests, 0 errors,
2.33 req/s, latency p50 19.3 s / p90 23.3 s / p99 27.6 s, 194 traffic rows (docs/serve.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _banking77 import DATA, banking77  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FALLBACK = ["my card has not arrived yet", "what is the exchange rate for euros",
            "how do I reset my PIN", "why was I charged a fee", "can I top up by bank transfer"]


def _messages() -> list[str]:
    if (DATA / "banking77" / "test.csv").exists():  # ../shared/data beside the repository
        return [text for text, _ in banking77("test")]
    return FALLBACK


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _project(tmp: Path, run: Path | None, base_model: str) -> tuple[Path, str]:
    """A minimal project folder: the base model, a registry, the default traffic store."""
    (tmp / "unused.jsonl").write_text("")
    (tmp / "tuneloop.yaml").write_text(
        f"data: {{train: unused.jsonl}}\nmodel: {{name: {json.dumps(base_model)}}}\n"
        "registry: {dir: registry}\nserve: {max_tokens: 64}\n")
    if run is None:
        return tmp / "tuneloop.yaml", "base"
    from tuneloop.registry.registry import Registry

    Registry(tmp / "registry").register(run, note="serve_load")
    return tmp / "tuneloop.yaml", "champion"


async def _client(http: httpx.AsyncClient, base: str, model: str, texts: list[str], max_tokens: int,
                  until: float, seed: int, lat: list[float], errors: list[str], sent: list[int],
                  answered: set[str]) -> None:
    rng = random.Random(seed)
    while time.perf_counter() < until:
        body = {"model": model, "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": rng.choice(texts)}]}
        t = time.perf_counter()
        sent[0] += 1
        try:
            r = await http.post(f"{base}/v1/chat/completions", json=body)
            if "x-request-id" in r.headers:  # every answer names its traffic-log row
                answered.add(r.headers["x-request-id"])
            if r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None:
                lat.append(time.perf_counter() - t)
            else:
                errors.append(f"{r.status_code}: {r.text[:200]}")
        except httpx.HTTPError as e:
            errors.append(f"{type(e).__name__}: {e}")


async def _load(bases: list[str], model: str, clients: int, duration: float, max_tokens: int) -> dict:
    texts = _messages()
    lat: list[float] = []
    errors: list[str] = []
    sent, answered = [0], set()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits) as http:
        start = time.perf_counter()
        until = start + duration
        await asyncio.gather(*[_client(http, bases[k % len(bases)], model, texts, max_tokens, until, k, lat,
                                       errors, sent, answered) for k in range(clients)])
        wall = time.perf_counter() - start
        health = (await http.get(f"{bases[0]}/health")).json()
        metrics = (await http.get(f"{bases[0]}/metrics")).text
    ms = np.array(lat) * 1000 if lat else np.array([np.nan])
    return {"clients": clients, "duration_s": duration, "wall_s": round(wall, 1), "max_tokens": max_tokens,
            "sent": sent[0], "answered": len(answered), "answered_ids": sorted(answered),
            "ok": len(lat), "errors": len(errors), "first_errors": errors[:5],
            "throughput_rps": round(len(lat) / wall, 2),
            "latency_ms": {k: round(float(np.percentile(ms, q)), 1)
                           for k, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
            "batching": health.get("batching"), "metrics_lines": metrics.count("\n")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--run", type=Path, help="serve this run folder as the champion (default: base)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the server (serve --threads); 0 = torch's default. On this "
                         "shared 2-core CPU, 2 threads took 49-58 s for 4 requests, 1 thread ~6 s per batch")
    ap.add_argument("--max-batch", type=int, default=16, help="serve --max-batch")
    ap.add_argument("--precision", default="bf16", help="serve --precision (fp32, bf16, auto)")
    ap.add_argument("--servers", type=int, default=1, help="server processes sharing one traffic store")
    ap.add_argument("--store", help="traffic store URL for every server (default: a SQLite file in the "
                                    "temp registry), e.g. postgresql://user:pw@127.0.0.1/db")
    ap.add_argument("--base-model", default="smollm2-135m-instruct",
                    help="model.name of the temp project (a catalog name or a model folder)")
    ap.add_argument("--keep", action="store_true", help="keep the temp registry and traffic log")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from tuneloop.serve.store import TrafficStore, display_url

    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    config, model = _project(tmp, args.run, args.base_model)
    url = args.store or f"sqlite:///{tmp / 'registry' / 'traffic.db'}"
    rows_before = TrafficStore(url).count_requests()
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("TUNELOOP_API_KEY", None)
    ports = [_free_port() for _ in range(args.servers)]
    command = [sys.executable, "-m", "tuneloop", "serve", str(config), "--model", model, "--host",
               "127.0.0.1", "--max-batch", str(args.max_batch), "--precision", args.precision, "--store", url,
               *(["--threads", str(args.threads)] if args.threads else [])]
    servers = [subprocess.Popen([*command, "--port", str(port)], env=env, cwd=tmp) for port in ports]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        t0 = time.perf_counter()
        for base, server in zip(bases, servers, strict=True):
            while True:
                if server.poll() is not None:
                    sys.exit(f"server exited with code {server.returncode}")
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.perf_counter() - t0 > 300:
                    sys.exit("server did not start within 300 s")
                time.sleep(0.5)
        startup = time.perf_counter() - t0
        res = asyncio.run(_load(bases, model, args.clients, args.duration, args.max_tokens))
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=60)
    store = TrafficStore(url)
    ids = set(res.pop("answered_ids"))
    logged = {r["request_id"]: r["status"] for r in store.requests() if r["request_id"] in ids}
    rows = store.count_requests() - rows_before
    res |= {"model": model, "servers": args.servers, "store": display_url(url),
            "server_startup_s": round(startup, 1), "logged": len(logged), "traffic_rows": rows,
            "traffic_rows_ok": sum(1 for s in logged.values() if s == 200),
            "cpu_count": os.cpu_count(), "server_threads": args.threads,
            "max_batch": args.max_batch, "precision": args.precision,
            "load_average_1m": round(os.getloadavg()[0], 2)}
    store.close()
    res["checks"] = {"no_errors": res["errors"] == 0,
                     "every_answer_logged": len(logged) == res["answered"] == rows,
                     "rows_match_ok": res["traffic_rows_ok"] == res["ok"]}
    if args.keep:
        res["folder"] = str(tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        lat = res["latency_ms"]
        print(f"{model}: {args.clients} clients x {args.duration:.0f} s, max_tokens {args.max_tokens}, "
              f"{args.servers} server(s), threads {args.threads or 'default'}, max batch {args.max_batch}, "
              f"{args.precision}, {os.cpu_count()} CPUs (1-min load average after: {res['load_average_1m']})")
        print(f"  store {res['store']}")
        print(f"  requests sent {res['sent']}  answered {res['answered']}  logged {res['logged']}  "
              f"(ok {res['ok']}, errors {res['errors']})  throughput {res['throughput_rps']} req/s")
        print(f"  latency ms  p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}")
        print(f"  traffic-log rows {res['traffic_rows']} (status 200: {res['traffic_rows_ok']})  "
              f"batching {res['batching']}")
        print(f"  checks {res['checks']}")
    sys.exit(0 if all(res["checks"].values()) else 1)


if __name__ == "__main__":
    main()

"""Bounded load test of `tuneloop serve` on loopback with the real bundled model.

    .venv/bin/python benchmarks/serve_load.py [--clients 1,8,32] [--duration 30] [--max-tokens 8]
                                              [--run RUN] [--threads N] [--precision fp32] [--json]
                                              [--no-auth] [--servers 2] [--store postgresql://...]

Starts the server in a subprocess (`python -m tuneloop serve`) on 127.0.0.1 with a fresh
registry and traffic store in a temp folder. With --run, that run folder is registered as v1
and served as the champion (an adapter over SmolLM2-135M); without it the base model is
served, with an API key that every client sends (a request without it must get 401). For
each client count in --clients, that many asyncio clients (httpx) send chat completions back
to back for --duration seconds, each a real customer message (banking77 test split).
Afterwards it checks that no request failed and that the traffic log holds exactly one row
per answered request, and prints, per level, requests answered, latency percentiles and
throughput. Exit code 1 when a check fails.

--servers N starts N server processes that share one traffic store (clients take turns);
--store URL makes that store a given database, e.g. the PostgreSQL that `.ci/postgres.sh`
starts (rows already there are not counted: only the ids of this run's answers are looked up).

Loopback only, by construction: the server binds 127.0.0.1 and the clients call it there.

Measured 2026-12-01 (quiet 2-core AMD EPYC, avx512_bf16 kind, defaults: fp32, auth on, base
SmolLM2-135M, 8-token replies): p50/p99 478/712 ms at 1 client, 720/1138 ms at 8, 2286/3217 ms
at 32; 820 requests, 0 errors, 820 traffic rows (docs/serve.md). ISA capped at AVX2: 479/746,
862/1518 and 2313/3000 ms. Earlier the same day, before the template prefix was kept per
server, ragged batches ran packed and linears ran on reordered weights: 603/770, 1299/2588
and 3817/4772 ms; on 2026-11-30, before the batcher waited for company and serve let OpenMP
threads spin briefly: 721/819, 2748/3731, 4370/5034 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
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
from _banking77 import banking77  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _messages() -> list[str]:
    """Real customer messages (banking77's test split, ../shared/data): never canned ones."""
    return [text for text, _ in banking77("test")]


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


async def _load(bases: list[str], model: str, clients: int, duration: float, max_tokens: int,
                key: str | None) -> dict:
    texts = _messages()
    lat: list[float] = []
    errors: list[str] = []
    sent, answered = [0], set()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits, headers=headers) as http:
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
    ap.add_argument("--clients", default="1,8,32",
                    help="comma list of concurrent client counts, one load level each")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load per level")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--run", type=Path, help="serve this run folder as the champion (default: base)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads of the server (serve --threads); 0 = serve's default")
    ap.add_argument("--max-batch", type=int, default=16, help="serve --max-batch")
    ap.add_argument("--precision", default="fp32",
                    help="serve --precision (fp32, the default of serve and the numerics eval "
                         "measured; bf16; auto)")
    ap.add_argument("--no-auth", action="store_true",
                    help="serve without an API key (default: a key is set and every request sends it)")
    ap.add_argument("--servers", type=int, default=1, help="server processes sharing one traffic store")
    ap.add_argument("--store", help="traffic store URL for every server (default: a SQLite file in the "
                                    "temp registry), e.g. postgresql://user:pw@127.0.0.1/db")
    ap.add_argument("--base-model", default="smollm2-135m-instruct",
                    help="model.name of the temp project (a catalog name or a model folder)")
    ap.add_argument("--keep", action="store_true", help="keep the temp registry and traffic log")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    levels = [int(c) for c in str(args.clients).split(",") if c.strip()]

    from tuneloop.models.cpu import cpu_kind, isa_capped
    from tuneloop.serve.store import TrafficStore, display_url

    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    config, model = _project(tmp, args.run, args.base_model)
    url = args.store or f"sqlite:///{tmp / 'registry' / 'traffic.db'}"
    rows_before = TrafficStore(url).count_requests()
    key = None if args.no_auth else secrets.token_urlsafe(24)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("TUNELOOP_API_KEY", None)
    if key:
        env["TUNELOOP_API_KEY"] = key
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
        if key:  # auth really is on: a request without the key is refused
            r = httpx.post(f"{bases[0]}/v1/chat/completions", timeout=30,
                           json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
            if r.status_code != 401:
                sys.exit(f"auth is not enforced: a request without the key got {r.status_code}")
        runs = [asyncio.run(_load(bases, model, c, args.duration, args.max_tokens, key))
                for c in levels]
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=60)
    store = TrafficStore(url)
    ids = set().union(*(r.pop("answered_ids") for r in runs))
    logged = {r["request_id"]: r["status"] for r in store.requests() if r["request_id"] in ids}
    rows = store.count_requests() - rows_before
    ok = sum(r["ok"] for r in runs)
    res = {"model": model, "levels": runs, "servers": args.servers, "store": display_url(url),
           "server_startup_s": round(startup, 1), "logged": len(logged), "traffic_rows": rows,
           "traffic_rows_ok": sum(1 for s in logged.values() if s == 200),
           "cpu_count": os.cpu_count(), "cpu_kind": cpu_kind(), "isa_capped": isa_capped(),
           "server_threads": args.threads or "default", "max_batch": args.max_batch,
           "precision": args.precision, "auth": bool(key),
           "load_average_1m": round(os.getloadavg()[0], 2)}
    store.close()
    # Rows: every answered request (a request refused for its key is not logged).
    res["checks"] = {"no_errors": all(r["errors"] == 0 for r in runs),
                     "every_answer_logged": len(logged) == len(ids) == rows,
                     "rows_match_ok": res["traffic_rows_ok"] == ok}
    if args.keep:
        res["folder"] = str(tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{model}: max_tokens {args.max_tokens}, {args.servers} server(s), threads "
              f"{res['server_threads']}, max batch {args.max_batch}, {args.precision}, auth "
              f"{'on' if key else 'off'}, CPU {res['cpu_kind']}{' (ISA capped)' if isa_capped() else ''}, "
              f"{os.cpu_count()} CPUs; store {res['store']}")
        for r in runs:
            lat = r["latency_ms"]
            print(f"  {r['clients']:3d} clients x {r['duration_s']:.0f} s: ok {r['ok']}, errors "
                  f"{r['errors']}, {r['throughput_rps']} req/s, latency ms p50 {lat['p50']}  "
                  f"p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}")
        print(f"  traffic-log rows {res['traffic_rows']} (status 200: {res['traffic_rows_ok']})  "
              f"checks {res['checks']}")
        by = {r["clients"]: r["latency_ms"] for r in runs}
        print(" ".join(f"p50_{c}={by[c]['p50']:.0f}ms p99_{c}={by[c]['p99']:.0f}ms" for c in levels))
    sys.exit(0 if all(res["checks"].values()) else 1)


if __name__ == "__main__":
    main()

"""The loop after shipping, end to end on CLINC150, with the real bundled SmolLM2-135M.

    python examples/clinc150-drift/run_demo.py [--port 8765] [--workdir DIR]

1. train a champion on 5 banking intents and register it (v1);
2. serve it (`tuneloop serve`, a subprocess) and replay banking traffic through the official
   `openai` client, posting the right label as feedback; `tuneloop monitor` -> no drift (exit 0);
3. replay travel traffic (5 new intents) the same way; `tuneloop monitor` -> drift (exit 1),
   with an HTML report;
4. `tuneloop retrain`: feedback + replay of the banking data, fine-tuned from v1's adapter,
   gated against v1 on the frozen banking test set (old intents) and on the fresh slice held
   out of the travel feedback (new intents, never trained on) -> promoted;
5. prints both versions' accuracy on both sets (the gate's measurements) and the timings.

Everything goes to WORKDIR (default: examples/clinc150-drift/runs/demo-TIMESTAMP); the figures
also to WORKDIR/demo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
TL = [sys.executable, "-m", "tuneloop"]


def read(name: str) -> list[dict]:
    return [json.loads(x) for x in (HERE / "data" / name).read_text().splitlines() if x.strip()]


def tl(*args: str, ok=(0,)) -> tuple[int, dict | None]:
    """Run a tuneloop command with --json; returns (exit code, parsed JSON)."""
    r = subprocess.run([*TL, *args, "--json"], capture_output=True, text=True)
    if r.returncode not in ok:
        sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:])
        raise SystemExit(f"tuneloop {args[0]} exited {r.returncode}")
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else None


def start_server(cfg_file: Path, port: int, log: Path) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen([*TL, "serve", str(cfg_file), "--port", str(port)],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server exited; see {log}")
        time.sleep(1)
    proc.terminate()
    raise SystemExit(f"the server did not come up in 300 s; see {log}")


def replay(rows: list[dict], port: int, cfg) -> dict:
    """Send each row as a chat request (rendered like the training prompts) with 16 concurrent
    clients, then post its true label as feedback. Returns accuracy of the served answers."""
    import httpx
    from openai import OpenAI

    from tuneloop.evaluate.metrics import parse_label

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    template, system = cfg.task.prompt_template, cfg.task.system_prompt

    def one(row: dict) -> bool:
        msgs = [{"role": "system", "content": system},
                {"role": "user", "content": template.format(text=row["text"], labels="")}]
        r = client.chat.completions.create(model="champion", messages=msgs, max_tokens=8,
                                           temperature=0)
        answer = r.choices[0].message.content or ""
        fb = httpx.post(f"http://127.0.0.1:{port}/v1/feedback", timeout=30,
                        json={"request_id": r.id, "label": row["label"]})
        fb.raise_for_status()
        return parse_label(answer, cfg.task.labels) == row["label"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:  # the server micro-batches concurrent requests
        right = list(pool.map(one, rows))
    return {"requests": len(rows), "served_accuracy": round(sum(right) / len(rows), 4),
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--set", action="append", default=[], dest="overrides",
                    help="Config override for every step, e.g. --set train.max_steps=2 (a smoke run).")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tuneloop.config import load_config
    from tuneloop.registry.registry import Registry
    from tuneloop.train.recipe import train

    work = (args.workdir or HERE / "runs" / f"demo-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_config(HERE / "tuneloop.yaml", [f"output.dir={work}", f"registry.dir={work / 'registry'}",
                                                 *args.overrides])
    cfg_file = work / "tuneloop.yaml"  # resolved (absolute paths): what the CLI steps read
    cfg_file.write_text(cfg.to_yaml())
    figures: dict = {"workdir": str(work), "timings_s": {}}
    t_all = time.perf_counter()

    def step(name: str, t0: float) -> None:
        figures["timings_s"][name] = round(time.perf_counter() - t0, 1)
        print(f"[{figures['timings_s'][name]:>6} s] {name}", flush=True)

    t0 = time.perf_counter()
    run, summary = train(cfg, quiet=True)
    registry = Registry.from_config(cfg)
    v1 = registry.register(run, note="champion: 5 banking intents")
    figures["champion"] = {"version": v1.id, "train_seconds": summary["train_seconds"],
                           "steps": summary["steps"], "train_examples": summary["examples"]["train"]}
    step("train + register champion", t0)

    server = start_server(cfg_file, args.port, work / "server.log")
    try:
        t0 = time.perf_counter()
        figures["traffic_old"] = replay(read("traffic_old.jsonl"), args.port, cfg)
        step("replay banking traffic + feedback", t0)
        t0 = time.perf_counter()
        code, mon = tl("monitor", str(cfg_file), ok=(0, 1))
        figures["monitor_old"] = _mon(code, mon)
        step("monitor (banking traffic only)", t0)

        t0 = time.perf_counter()
        figures["traffic_new"] = replay(read("traffic_new.jsonl"), args.port, cfg)
        step("replay travel traffic + feedback", t0)
        t0 = time.perf_counter()
        code, mon = tl("monitor", str(cfg_file), "--html", str(work / "drift.html"), ok=(0, 1))
        figures["monitor_new"] = _mon(code, mon)
        step("monitor (with travel traffic)", t0)
    finally:
        server.terminate()
        server.wait(30)

    t0 = time.perf_counter()
    code, res = tl("retrain", str(cfg_file), ok=(0, 1))
    g = res["gate"]
    figures["retrain"] = {"exit_code": code, "challenger": res["challenger"], "counts": res["data"]["counts"],
                          "audit": res["audit"], "decision": g["decision"], "promoted": g["promoted"],
                          "fresh": {k: g["fresh"][k] for k in ("n", "champion", "challenger", "p_value")},
                          "frozen": {k: g["frozen"][k] for k in ("n", "champion", "challenger", "p_value")},
                          "reasons": g["reasons"], "evidence": g["record"]}
    step("retrain + gate", t0)

    figures["timings_s"]["total"] = round(time.perf_counter() - t_all, 1)
    (work / "demo.json").write_text(json.dumps(figures, indent=2) + "\n")
    _print(figures)


def _mon(code: int, m: dict) -> dict:
    s = m["signals"]
    return {"exit_code": code, "verdict": m["verdict"], "requests": m["requests"],
            "mmd_p": s["embedding_mmd"]["p_value"], "domain_auc": s["domain_classifier"]["auc"],
            "random_auc": s["domain_classifier"]["random_auc"], "novel_term_rate": s["novel_terms"]["rate"],
            "perplexity_median": [s.get("perplexity", {}).get("ref_median"),
                                  s.get("perplexity", {}).get("cur_median")],
            "parse_failures": s["output"].get("parse_failures", {}).get("value"),
            "feedback_quality": s["quality"]["current"], "reasons": m["reasons"]}


def _print(f: dict) -> None:
    print("\n== monitor ==")
    for k in ("monitor_old", "monitor_new"):
        m = f[k]
        print(f"{k}: exit {m['exit_code']} {m['verdict']}: MMD p={m['mmd_p']}, domain AUC {m['domain_auc']} "
              f"(random {m['random_auc']}), novel-term rate {m['novel_term_rate']}, feedback quality "
              f"{m['feedback_quality']['value']}")
    r = f["retrain"]
    print(f"\n== retrain + gate: {r['challenger']} {r['decision']} ==")
    for line in r["reasons"]:
        print(f"  {line}")
    print("\n== accuracy (label scoring), measured by the gate ==")
    print(f"{'':40}{'before (v1)':>12}{'after (' + r['challenger'] + ')':>12}")
    for name, k in (("new intents: fresh slice of the traffic", "fresh"),
                    ("old intents: frozen banking test set", "frozen")):
        print(f"{name:40}{r[k]['champion']:>12}{r[k]['challenger']:>12}   n={r[k]['n']} p={r[k]['p_value']}")
    print(f"\ntimings (s): {json.dumps(f['timings_s'])}\nfigures: {f['workdir']}/demo.json")


if __name__ == "__main__":
    main()

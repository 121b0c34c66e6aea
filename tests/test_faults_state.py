"""Fault injection for what tuneloop keeps on disk: checkpoints, the registry, adapters, models.

Read CASES as a table. Each row damages a copy of one small world (a project with a 4-step
LoRA run that has checkpoints at steps 2 and 4, and a registry holding that run as v1), runs one
`tuneloop` command through the CLI's entry point (`tuneloop.cli.main`, so exit codes are the
ones a shell sees: 2 for a problem the user can fix, with a message naming the file and the
fix), and then checks:

- the exit code and that the output holds the message fragment;
- every file of the world is byte-identical afterwards and no file was added, except under the
  row's `may_write` folders (a resumed run writes its own folder; a promotion writes the
  registry);
- no temp file or folder is left anywhere in the world.

An uncaught exception (a traceback) fails the row: a user's mistake never shows one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import write_classification_project


@dataclass(frozen=True)
class Case:
    name: str  # also the key of its fault function below
    how: str  # how the fault is made, in words
    command: str  # {proj} project folder, {run} run folder, {reg} registry folder, {tmp} scratch
    code: int  # expected exit code
    says: str  # a fragment the output must contain
    may_write: tuple[str, ...] = ()  # world folders the command may change (relative)


RUN, REG = "proj/runs/run", "proj/registry"
TRUNCATE = "cut the file to half its length"
GARBLE = "replace registry.json by the first half of itself (a torn write)"

CASES = [
    # ---- checkpoints and --resume ---------------------------------------------------------
    Case("resume-without-checkpoint", "delete RUN/checkpoints",
         "train --resume {run} --quiet", 2, "no checkpoint to resume from"),
    Case("resume-crafted-checkpoint",
         "RUN/checkpoints/step-0000004/state.pt: a pickle whose __reduce__ runs `touch PWNED`",
         "train --resume {run} --quiet", 2, "refused to load"),
    Case("resume-corrupt-latest-checkpoint",
         f"RUN/checkpoints/step-0000004/trainable.safetensors: {TRUNCATE}",
         "train --resume {run} --quiet", 0,
         "skipping a corrupt checkpoint: {run}/checkpoints/step-0000004/trainable.safetensors",
         may_write=(RUN,)),
    Case("disk-full-during-checkpoint",
         "the second checkpoint write raises OSError(ENOSPC) after writing part of a file",
         "train {proj} --quiet --set output.name=full --set train.save_every=1", 2,
         "No space left on device", may_write=("proj/runs/full",)),
    # ---- a damaged registry.json or provenance.json ----------------------------------------
    Case("registry-json-torn/list", GARBLE, "registry list --registry {reg}", 2,
         "registry.json: not valid JSON"),
    Case("registry-json-torn/promote", GARBLE, "registry promote v1 --registry {reg}", 2,
         "registry.json.bak holds the last state tuneloop wrote"),
    Case("registry-json-torn/add", GARBLE, "registry add {run} --registry {reg}", 2,
         "registry.json: not valid JSON"),  # and no orphan versions/v2 (byte-identical world)
    Case("registry-json-torn/monitor", GARBLE, "monitor {proj}", 2, "registry.json: not valid JSON"),
    Case("registry-json-torn/retrain", GARBLE, "retrain {proj}", 2, "registry.json: not valid JSON"),
    Case("registry-json-torn/gate", GARBLE, "gate {proj}", 2, "registry.json: not valid JSON"),
    Case("registry-json-torn/loop", GARBLE, "loop {proj}", 2, "registry.json: not valid JSON"),
    Case("registry-json-not-a-map", 'registry.json holds ["v1"]', "monitor {proj}", 2,
         "registry.json: expected a JSON object"),
    Case("registry-json-deleted", "delete registry.json (registry.json.bak remains)",
         "monitor {proj}", 2, "registry.json: missing"),
    Case("provenance-torn/show", f"versions/v1/provenance.json: {TRUNCATE}",
         "registry show v1 --registry {reg}", 2, "v1/provenance.json: not valid JSON"),
    Case("provenance-torn/monitor", f"versions/v1/provenance.json: {TRUNCATE}",
         "monitor {proj}", 2, "v1/provenance.json: not valid JSON"),
    Case("kill-9-leftovers-are-swept",
         "a `registry add` and a `registry promote` each killed with SIGKILL mid-write",
         "registry promote v1 --registry {reg}", 0, "champion: v1 -> v1", may_write=(REG,)),
    # ---- damaged adapters ------------------------------------------------------------------
    Case("adapter-truncated/registry-add", f"RUN/adapter/adapter_model.safetensors: {TRUNCATE}",
         "registry add {run} --registry {reg}", 2, "adapter_model.safetensors: not a readable"),
    Case("adapter-wrong-shape/registry-add",
         "one lora_A tensor of RUN/adapter resized to another base model's width",
         "registry add {run} --registry {reg}", 2, "does not fit the base model"),
    Case("adapter-config-torn/registry-add", "RUN/adapter/adapter_config.json: `{`",
         "registry add {run} --registry {reg}", 2, "adapter_config.json: not valid JSON"),
    Case("adapter-truncated/generate", f"RUN/adapter/adapter_model.safetensors: {TRUNCATE}",
         "generate {run} hello", 2, "adapter_model.safetensors: not a readable"),
    Case("adapter-truncated/export", f"RUN/adapter/adapter_model.safetensors: {TRUNCATE}",
         "export {run} --out {tmp}/merged", 2, "adapter_model.safetensors: not a readable"),
    Case("adapter-truncated/eval", f"RUN/adapter/adapter_model.safetensors: {TRUNCATE}",
         "eval {run} --baselines none --limit 2 --no-generate --quiet", 2,
         "adapter_model.safetensors: not a readable"),
    # ---- model names -----------------------------------------------------------------------
    Case("mistyped-catalog-name", "model.name: smollm2-135m-instrct (offline, as in the tests)",
         "train {proj} --quiet --set model.name=smollm2-135m-instrct --set output.name=typo", 2,
         "did you mean 'smollm2-135m-instruct'"),
    Case("unknown-hub-id", "model.name: someone/no-such-model, not in the Hugging Face cache",
         "train {proj} --quiet --set model.name=someone/no-such-model --set output.name=hub", 2,
         "not a catalog name, a model folder, or a hub id in the Hugging Face cache"),
]

# ---- how each fault is made --------------------------------------------------------------------
FAULTS: dict[str, Callable[[Path, pytest.MonkeyPatch], None]] = {}


def fault(*names: str):
    def add(fn):
        for n in names:
            FAULTS[n] = fn
        return fn
    return add


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@fault("resume-without-checkpoint")
def _no_checkpoints(w: Path, mp) -> None:
    shutil.rmtree(w / RUN / "checkpoints")


class _RunsCode:
    """Unpickling this calls os.system: what a crafted checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@fault("resume-crafted-checkpoint")
def _crafted_checkpoint(w: Path, mp) -> None:
    torch.save({"optimizer": _RunsCode(w / "PWNED"), "scheduler": {}, "rng": {}},
               w / RUN / "checkpoints" / "step-0000004" / "state.pt")


@fault("resume-corrupt-latest-checkpoint")
def _corrupt_latest(w: Path, mp) -> None:
    _truncate(w / RUN / "checkpoints" / "step-0000004" / "trainable.safetensors")


@fault("disk-full-during-checkpoint")
def _disk_full(w: Path, mp) -> None:
    from tuneloop.train import checkpoint

    real, calls = checkpoint.save_file, []

    def save_file(tensors, filename, *a, **k):
        calls.append(filename)
        if len(calls) == 2:  # the first checkpoint is written; the disk fills during the second
            Path(filename).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return real(tensors, filename, *a, **k)

    mp.setattr(checkpoint, "save_file", save_file)


@fault(*(c.name for c in CASES if c.name.startswith("registry-json-torn/")))
def _torn_registry(w: Path, mp) -> None:
    _truncate(w / REG / "registry.json")


@fault("registry-json-not-a-map")
def _registry_not_a_map(w: Path, mp) -> None:
    (w / REG / "registry.json").write_text('["v1"]\n')


@fault("registry-json-deleted")
def _registry_deleted(w: Path, mp) -> None:
    (w / REG / "registry.json").unlink()


@fault("provenance-torn/show", "provenance-torn/monitor")
def _torn_provenance(w: Path, mp) -> None:
    _truncate(w / REG / "versions" / "v1" / "provenance.json")


_DIE_ON_REPLACE = """
import os, signal, sys
from tuneloop.registry.registry import Registry
os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # die between write and rename
reg = Registry(sys.argv[1])
reg.register(sys.argv[2]) if sys.argv[3] == "add" else reg.promote("v1")
"""


@fault("kill-9-leftovers-are-swept")
def _killed_mid_write(w: Path, mp) -> None:
    for op in ("promote", "add"):  # add dies before it takes the lock (which sweeps)
        p = subprocess.run([sys.executable, "-c", _DIE_ON_REPLACE, str(w / REG), str(w / RUN), op],
                           capture_output=True, timeout=120)
        assert p.returncode == -9, p.stderr.decode()[-2000:]
    assert len(_temp_files(w)) >= 2  # a half-copied version and a registry.json temp file


@fault("adapter-truncated/registry-add", "adapter-truncated/generate", "adapter-truncated/export",
       "adapter-truncated/eval")
def _truncated_adapter(w: Path, mp) -> None:
    _truncate(w / RUN / "adapter" / "adapter_model.safetensors")


@fault("adapter-wrong-shape/registry-add")
def _wrong_shape_adapter(w: Path, mp) -> None:
    file = w / RUN / "adapter" / "adapter_model.safetensors"
    weights = load_file(str(file))
    key = next(k for k in weights if "lora_A" in k)
    weights[key] = torch.zeros(weights[key].shape[0], weights[key].shape[1] // 2)
    save_file(weights, str(file))


@fault("adapter-config-torn/registry-add")
def _torn_adapter_config(w: Path, mp) -> None:
    (w / RUN / "adapter" / "adapter_config.json").write_text("{")


@fault("mistyped-catalog-name", "unknown-hub-id")
def _offline(w: Path, mp) -> None:
    mp.setenv("HF_HUB_OFFLINE", "1")


# ---- the world and the checks ------------------------------------------------------------------
@pytest.fixture(scope="session")
def world(tmp_path_factory, tiny_model) -> Path:
    """proj/ (tuneloop.yaml, train.jsonl), proj/runs/run (4 steps, checkpoints at 2 and 4) and
    proj/registry with that run as v1 (the champion)."""
    from tuneloop.config import load_config
    from tuneloop.registry.registry import Registry
    from tuneloop.train.recipe import train

    root = tmp_path_factory.mktemp("world")
    cfg = write_classification_project(
        root / "proj", tiny_model,
        train={"max_steps": 4, "save_every": 2, "eval_every": 2}, output={"name": "run"})
    train(load_config(cfg), quiet=True)
    Registry(root / REG).register(root / RUN)
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _temp_files(root: Path) -> list[str]:
    """Leftovers of an interrupted write: temp folders (.tmp-*) and mkstemp files (.NAME.xxxx)."""
    return [str(p.relative_to(root)) for p in root.rglob(".*")
            if p.name.startswith(".tmp") or (p.name.count(".") >= 3 and p.name != ".lock")]


def _run_cli(args: list[str], capsys, mp) -> tuple[int, str]:
    from tuneloop.cli import main

    mp.setattr(sys, "argv", ["tuneloop", *args])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _squash(text: str) -> str:
    return "".join(text.split())  # rich wraps long lines; compare without whitespace


def test_every_case_has_a_fault():
    assert {c.name for c in CASES} == set(FAULTS)
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault(case: Case, world, tmp_path, capsys, monkeypatch):
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    FAULTS[case.name](w, monkeypatch)
    before = _snapshot(w)
    fill = {"proj": w / "proj", "run": w / RUN, "reg": w / REG, "tmp": scratch}
    args = [a.format(**fill) for a in shlex.split(case.command)]
    code, output = _run_cli(args, capsys, monkeypatch)
    monkeypatch.undo()

    assert code == case.code, output[-3000:]
    assert _squash(case.says.format(**fill)) in _squash(output), output[-3000:]
    if case.code == 2:
        assert _squash("error:") in _squash(output) and "Traceback" not in output
    after = _snapshot(w)
    kept = {k for k in before if not k.startswith(case.may_write)} if case.may_write else set(before)
    changed = sorted(k for k in kept if after.get(k) != before[k])
    added = sorted(k for k in set(after) - set(before) if not k.startswith(case.may_write or ("\0",)))
    assert not changed and not added, f"changed: {changed}, added: {added}"
    assert _temp_files(w) == []
    assert not (w / "PWNED").exists()  # the crafted checkpoint ran no code
    assert not list(scratch.rglob("*")) or case.code == 0  # a refused export writes nothing


def test_resumed_run_after_a_corrupt_checkpoint_matches_the_uninterrupted_one(world, tmp_path, capsys,
                                                                               monkeypatch):
    """The row above exits 0; here its result: the same adapter as the run that never broke."""
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    _corrupt_latest(w, monkeypatch)
    assert _run_cli(["train", "--resume", str(w / RUN), "--quiet"], capsys, monkeypatch)[0] == 0
    a = load_file(str(world / RUN / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(w / RUN / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (w / RUN / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]  # no duplicated rows


# ---- model names, without the CLI --------------------------------------------------------------
def test_a_cached_hub_id_resolves_to_its_snapshot_without_the_network(tmp_path, monkeypatch):
    import huggingface_hub

    from tuneloop.models.load import resolve_model

    snap = tmp_path / "hub" / "models--someone--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--someone--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "model_info", _no_network)
    assert resolve_model("someone/tiny") == str(snap)


def _no_network(*a, **k):
    raise AssertionError("the hub must not be asked")


def test_an_unreachable_hub_fails_fast_with_a_clear_error(monkeypatch):
    import huggingface_hub

    from tuneloop.errors import TuneloopError
    from tuneloop.models.load import HUB_TIMEOUT_S, resolve_model

    asked = []

    def model_info(repo_id, timeout=None, **k):
        asked.append(timeout)
        raise ConnectionError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "model_info", model_info)
    with pytest.raises(TuneloopError, match="did not answer") as e:
        resolve_model("gemma3-207m")
    assert asked == [HUB_TIMEOUT_S] and HUB_TIMEOUT_S <= 10
    assert "did you mean 'gemma3-270m'" in str(e.value)

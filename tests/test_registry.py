"""Registry: versions with provenance, aliases, promote/rollback, crash safety, CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import write_classification_project
from tuneloop.cli import app
from tuneloop.errors import TuneloopError
from tuneloop.registry.registry import Registry

_CACHE: dict[str, Path] = {}


def trained_run(tmp_path_factory, tiny_model) -> Path:
    """One real 2-step LoRA run on the tiny model, shared by the registry and server tests."""
    if "run" not in _CACHE:
        from tuneloop.config import load_config
        from tuneloop.train.recipe import train

        cfg = write_classification_project(tmp_path_factory.mktemp("regproj"), tiny_model,
                                           train={"max_steps": 2, "eval_every": 2})
        _CACHE["run"], _ = train(load_config(cfg), quiet=True)
    return _CACHE["run"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model) -> Path:
    return trained_run(tmp_path_factory, tiny_model)


def test_register_copies_run_and_records_provenance(tmp_path, tiny_run):
    reg = Registry(tmp_path / "reg")
    v = reg.register(tiny_run, note="first")
    assert v.id == "v1" and reg.aliases() == {"champion": "v1"}  # first version is champion
    for name in ("adapter/adapter_model.safetensors", "tokenizer", "config.yaml", "summary.json",
                 "data.json", "provenance.json"):
        assert (v.path / name).exists(), name
    data = json.loads((tiny_run / "data.json").read_text())
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert v.data_hash == data["fingerprint"]["train"]
    assert v.metrics["val_loss"] == summary["val_loss"]
    assert v.base_model == v.config["model"]["name"] and v.parent is None and v.note == "first"
    card = (v.path / "README.md").read_text()  # the model card, with Hugging Face front matter
    assert card.startswith("---\n")
    assert "base_model:" in card.split("---")[1]
    v2 = reg.register(tiny_run, parent="v1", alias="challenger")
    assert v2.id == "v2" and v2.parent == "v1"
    assert reg.aliases() == {"champion": "v1", "challenger": "v2"}
    assert [x.id for x in reg.versions()] == ["v1", "v2"]
    assert reg.get("challenger").id == "v2"


def test_promote_records_history_and_rollback_restores(tmp_path, tiny_run):
    reg = Registry(tmp_path / "reg")
    for _ in range(3):
        reg.register(tiny_run)
    reg.set_alias("challenger", "v2")
    reg.promote("challenger", {"p_value": 0.01, "delta": 0.05})
    assert reg.aliases() == {"champion": "v2"}  # a promoted challenger stops being challenger
    last = reg.history()[-1]
    assert (last["from"], last["to"], last["evidence"]["p_value"]) == ("v1", "v2", 0.01)
    reg.promote("v3")
    assert reg.rollback().id == "v2"
    assert reg.rollback().id == "v1"
    assert reg.aliases()["champion"] == "v1"
    with pytest.raises(TuneloopError, match="no previous champion"):
        reg.rollback()


@pytest.mark.parametrize("ref", ["v9", "../v1", "v1/../../etc", "", "champion/x", "..", "loser"])
def test_unknown_or_unsafe_refs_are_user_errors(tmp_path, tiny_run, ref):
    reg = Registry(tmp_path / "reg")
    reg.register(tiny_run)
    with pytest.raises(TuneloopError):
        reg.get(ref)


def test_pickle_weights_are_refused(tmp_path, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "adapter" / "adapter_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(TuneloopError, match="pickle"):
        Registry(tmp_path / "reg").register(run)


def test_parent_is_inferred_from_init_adapter(tmp_path, tiny_run):
    import yaml

    reg = Registry(tmp_path / "reg")
    v1 = reg.register(tiny_run)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["method"]["init_adapter"] = str(v1.path / "adapter")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert reg.register(run).parent == "v1"


def test_load_gives_the_runs_model(tmp_path, tiny_run):
    from tuneloop.runs import load_run_model

    reg = Registry(tmp_path / "reg")
    reg.register(tiny_run)
    model, tok = reg.load("champion")
    ref, _, _ = load_run_model(tiny_run)
    x = torch.tensor([tok("hello world", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():  # merged into the weights: the same function to float rounding
        assert torch.allclose(model(x).logits, ref(x).logits, atol=1e-5)
    assert not hasattr(model, "peft_config")  # merged: plain layers, one matmul each


PROMOTER = """
import sys
from tuneloop.registry.registry import Registry
reg = Registry(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    reg.promote("v1" if i % 2 else "v2", {"i": i})
    i += 1
"""


def test_kill_during_promotion_leaves_a_valid_champion(tmp_path, tiny_run):
    reg = Registry(tmp_path / "reg")
    reg.register(tiny_run)
    reg.register(tiny_run)
    for k in range(5):
        p = subprocess.Popen([sys.executable, "-c", PROMOTER, str(reg.root)], stdout=subprocess.PIPE)
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(0.2 + 0.07 * k)  # land the kill at different points of the write/rename cycle
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        state = json.loads(reg.state_path.read_text())  # always complete JSON, never torn
        assert state["aliases"]["champion"] in {"v1", "v2"}
        assert reg.get("champion").path.is_dir()
        assert state["history"][-1]["to"] == state["aliases"]["champion"]
    assert len(reg.history()) > 10  # the loop really was promoting when killed


def _cli(args: list[str]) -> dict:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_cli_add_list_promote_rollback(tmp_path, tiny_run, tiny_model):
    cfg = write_classification_project(tmp_path / "proj", tiny_model)
    c = ["--config", str(cfg), "--json"]
    assert _cli(["registry", "add", str(tiny_run), *c])["id"] == "v1"
    added = _cli(["registry", "add", str(tiny_run), "--challenger", "--note", "retrained", *c])
    assert added["aliases"] == ["challenger"]
    listed = _cli(["registry", "list", *c])
    assert [v["id"] for v in listed["versions"]] == ["v1", "v2"]
    assert listed["aliases"] == {"champion": "v1", "challenger": "v2"}
    assert _cli(["registry", "promote", "v2", "--reason", "gate passed", *c]) == {
        "champion": "v2", "previous": "v1"}
    assert _cli(["registry", "show", "champion", *c])["note"] == "retrained"
    assert _cli(["registry", "rollback", *c])["champion"] == "v1"
    assert (tmp_path / "proj" / "registry" / "versions" / "v2").is_dir()  # registry.dir of the config
    hist = _cli(["registry", "history", *c])["history"]
    assert [e["action"] for e in hist][-2:] == ["promote", "rollback"]


# ---- corruption is named, never reinterpreted; nothing unloadable is accepted -----------------
def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("damage", ["torn", "not a map", "bad alias", "deleted"])
def test_a_damaged_registry_json_is_an_error_for_every_reader(tmp_path, tiny_run, damage):
    reg = Registry(tmp_path / "reg")
    reg.register(tiny_run)
    reg.promote("v1", {"reason": "again"})
    assert reg.backup_path.read_text() == reg.state_path.read_text()  # the backup follows each write
    text = reg.state_path.read_text()
    if damage == "deleted":
        reg.state_path.unlink()
    else:
        reg.state_path.write_text({"torn": text[: len(text) // 2], "not a map": "[]",
                                   "bad alias": '{"aliases": {"champion": "../x"}}'}[damage])
    before = _tree(reg.root)
    readers = [reg.aliases, reg.history, reg.champion, lambda: reg.get("champion"),
               lambda: reg.promote("v1"), reg.rollback, lambda: reg.set_alias("challenger", "v1"),
               lambda: reg.register(tiny_run)]
    for read in readers:
        with pytest.raises(TuneloopError, match=r"registry\.json.*cp .*registry\.json\.bak"):
            read()
    assert _tree(reg.root) == before  # no orphan versions/v2, nothing rewritten


def test_monitor_and_retrain_name_a_damaged_registry_instead_of_no_champion(tmp_path, tiny_run, tiny_model):
    from tuneloop.config import load_config
    from tuneloop.monitor.check import run_monitor
    from tuneloop.retrain.retrain import retrain

    cfg = load_config(write_classification_project(tmp_path / "proj", tiny_model))
    reg = Registry.from_config(cfg)
    reg.register(tiny_run)
    reg.state_path.write_text("{")
    for stage in (run_monitor, retrain):
        with pytest.raises(TuneloopError, match="registry.json: not valid JSON"):
            stage(cfg)
    reg.state_path.unlink()
    reg.backup_path.unlink()
    assert Registry.from_config(cfg).champion() is None  # truly empty: no champion, no error


def test_a_damaged_provenance_is_named(tmp_path, tiny_run):
    reg = Registry(tmp_path / "reg")
    v = reg.register(tiny_run)
    text = (v.path / "provenance.json").read_text()
    (v.path / "provenance.json").write_text(text[: text.index('"config"')])  # torn
    for read in (reg.versions, lambda: reg.get("v1"), reg.champion):
        with pytest.raises(TuneloopError, match=rf"v1/provenance.json: not valid JSON.*registry add "
                                                rf"{tiny_run}"):
            read()


@pytest.mark.parametrize("damage", ["truncated", "wrong shape", "missing tensor", "config torn"])
def test_add_refuses_an_adapter_that_would_not_load(tmp_path, tiny_run, damage):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    file = run / "adapter" / "adapter_model.safetensors"
    weights = load_file(str(file))
    key = next(k for k in weights if "lora_A" in k)
    if damage == "truncated":
        file.write_bytes(file.read_bytes()[:-10])
    elif damage == "wrong shape":
        weights[key] = torch.zeros(weights[key].shape[0], 3)
        save_file(weights, str(file))
    elif damage == "missing tensor":
        del weights[key]
        save_file(weights, str(file))
    else:
        (run / "adapter" / "adapter_config.json").write_text('{"peft_type": ')
    reg = Registry(tmp_path / "reg")
    with pytest.raises(TuneloopError, match="adapter_(model.safetensors|config.json): "):
        reg.register(run)
    assert not reg.versions_dir.exists() or not any(reg.versions_dir.iterdir())


def test_loading_a_damaged_registered_adapter_names_the_file(tmp_path, tiny_run):
    reg = Registry(tmp_path / "reg")
    v = reg.register(tiny_run)
    file = v.path / "adapter" / "adapter_model.safetensors"
    file.write_bytes(file.read_bytes()[:100])
    with pytest.raises(TuneloopError, match=f"{file}: not a readable safetensors file"):
        reg.load("champion")


DIE_ON_REPLACE = """
import os, signal, sys
from tuneloop.registry.registry import Registry
os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # killed between write and rename
Registry(sys.argv[1]).promote("v1")
"""


def test_temp_files_of_a_killed_promotion_are_removed_by_the_next_operation(tmp_path, tiny_run):
    reg = Registry(tmp_path / "reg")
    reg.register(tiny_run)
    p = subprocess.run([sys.executable, "-c", DIE_ON_REPLACE, str(reg.root)], timeout=120)
    assert p.returncode == -signal.SIGKILL
    stale_version = reg.versions_dir / ".tmp-999999999-x"  # a copy whose process is gone
    stale_version.mkdir()
    assert [f.name for f in reg.root.glob(".registry.json.*")]  # what the kill left
    reg.set_alias("challenger", "v1")
    assert not list(reg.root.glob(".registry.json.*")) and not stale_version.exists()
    assert reg.aliases() == {"champion": "v1", "challenger": "v1"}

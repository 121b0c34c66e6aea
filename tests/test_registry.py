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
    with torch.no_grad():
        assert torch.allclose(model(x).logits, ref(x).logits)


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

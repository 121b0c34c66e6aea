import json

import pytest
import yaml

from tuneloop.config import json_schema, load_config
from tuneloop.errors import TuneloopError


def _write(tmp_path, cfg) -> str:
    p = tmp_path / "tuneloop.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_defaults_and_relative_paths(tmp_path):
    cfg = load_config(_write(tmp_path, {"data": {"train": "d/train.jsonl"}}))
    assert cfg.data.train == str(tmp_path / "d" / "train.jsonl")
    assert cfg.method.name == "lora" and cfg.model.name == "smollm2-135m-instruct"
    assert cfg.output.dir == str(tmp_path / "runs")


def test_unknown_key_names_file_key_and_fix(tmp_path):
    p = _write(tmp_path, {"data": {"train": "t.jsonl"}, "train": {"learning_rat": 1e-4}})
    with pytest.raises(TuneloopError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "train.learning_rat" in msg and "spelling" in msg


def test_bad_value_and_missing_section(tmp_path):
    p = _write(tmp_path, {"data": {"train": "t.jsonl"}, "method": {"name": "lorax"}})
    with pytest.raises(TuneloopError, match="method.name"):
        load_config(p)
    with pytest.raises(TuneloopError, match="data: Field required"):
        load_config(_write(tmp_path, {"train": {"epochs": 1}}))


def test_set_overrides_typed_values(tmp_path):
    p = _write(tmp_path, {"data": {"train": "t.jsonl"}})
    cfg = load_config(p, ["train.learning_rate=1e-4", "method.name=dora", "task.labels=[a, b]"])
    assert cfg.train.learning_rate == pytest.approx(1e-4)
    assert cfg.method.name == "dora" and cfg.task.labels == ["a", "b"]
    with pytest.raises(TuneloopError, match="KEY=VALUE"):
        load_config(p, ["train.learning_rate"])
    with pytest.raises(TuneloopError, match="train.batch_size"):
        load_config(p, ["train.batch_size=0"])


def test_not_yaml_and_missing_file(tmp_path):
    p = tmp_path / "tuneloop.yaml"
    p.write_text("data: [unclosed")
    with pytest.raises(TuneloopError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(TuneloopError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_schema_lists_every_section():
    schema = json.loads(json_schema())
    assert set(schema["properties"]) == {"data", "task", "model", "method", "train", "eval",
                                         "output", "registry", "serve", "monitor",
                                         "retrain", "seed", "audit"}

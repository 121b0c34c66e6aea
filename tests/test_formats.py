import hashlib
import json

import pandas as pd
import pytest

from tuneloop.config import DataConfig, TaskConfig
from tuneloop.data.load import load_examples
from tuneloop.errors import TuneloopError

TASK = TaskConfig()


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_chat_jsonl_keeps_ids_and_turns(tmp_path):
    p = _jsonl(tmp_path / "c.jsonl", [
        {"id": "a1", "messages": [{"role": "system", "content": "s"},
                                  {"role": "user", "content": "hi"},
                                  {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]}])
    loaded = load_examples(p, DataConfig(train=str(p)), TASK)
    assert loaded.format == "chat"
    assert [e.id for e in loaded.examples] == ["a1", "2"]
    assert [m.role for m in loaded.examples[0].messages] == ["system", "user", "assistant"]


def test_prompt_completion_csv_with_quoted_newline(tmp_path):
    p = tmp_path / "pc.csv"
    p.write_text('prompt,completion\n"line one\nline two",answer\nq2,a2\n')
    ex = load_examples(p, DataConfig(train=str(p)), TASK).examples
    assert ex[0].messages[0].content == "line one\nline two" and ex[0].target == "answer"
    assert ex[1].id == "2"


def test_alpaca_parquet(tmp_path):
    p = tmp_path / "a.parquet"
    pd.DataFrame({"instruction": ["Add", "Say hi"], "input": ["1+1", ""],
                  "output": ["2", "hi"]}).to_parquet(p)
    loaded = load_examples(p, DataConfig(train=str(p)), TASK)
    assert loaded.format == "alpaca"
    assert loaded.examples[0].messages[0].content == "Add\n\n1+1"
    assert loaded.examples[1].messages[0].content == "Say hi"


def test_text_label_tsv_with_column_mapping_and_template(tmp_path):
    p = tmp_path / "t.tsv"
    p.write_text("utterance\tintent\nwhere is my card\tcard\nrate?\trate\n")
    data = DataConfig(train=str(p), columns={"text": "utterance", "label": "intent"})
    task = TaskConfig(type="classification", labels=["card", "rate"],
                      prompt_template="Labels: {labels}. Text: {text}")
    ex = load_examples(p, data, task).examples
    assert ex[0].label == "card" and ex[0].target == "card"
    assert ex[0].messages[0].content == "Labels: card, rate. Text: where is my card"


def test_explicit_format_override(tmp_path):
    p = _jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "completion": "c", "text": "t",
                                       "label": "l"}])
    loaded = load_examples(p, DataConfig(train=str(p), format="text_label"), TASK)
    assert loaded.format == "text_label" and loaded.examples[0].label == "l"


def test_bad_json_line_names_file_and_line(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": oops}\n')
    with pytest.raises(TuneloopError, match=r"b.jsonl:2: invalid JSON"):
        load_examples(p, DataConfig(train=str(p)), TASK)


def test_skip_invalid_reports_count(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\nnot json\n{"prompt": "c"}\n'
                 '{"prompt": "d", "completion": "e"}\n')
    loaded = load_examples(p, DataConfig(train=str(p), skip_invalid=True), TASK)
    assert len(loaded.examples) == 2 and len(loaded.skipped) == 2
    assert loaded.skipped[0].endswith("2: invalid JSON (Expecting value at column 1)")


def test_no_assistant_turn_is_a_clear_error(tmp_path):
    p = _jsonl(tmp_path / "n.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(TuneloopError, match="n.jsonl:1: no assistant turn"):
        load_examples(p, DataConfig(train=str(p)), TASK)


def test_unknown_role(tmp_path):
    p = _jsonl(tmp_path / "r.jsonl", [{"messages": [{"role": "bot", "content": "hi"}]}])
    with pytest.raises(TuneloopError, match=r"messages\[0\].role is 'bot'"):
        load_examples(p, DataConfig(train=str(p)), TASK)


def test_label_outside_label_list(tmp_path):
    p = _jsonl(tmp_path / "l.jsonl", [{"text": "x", "label": "a"}, {"text": "y", "label": "z"}])
    task = TaskConfig(type="classification", labels=["a", "b"])
    with pytest.raises(TuneloopError, match=r"l.jsonl:2: label 'z' is not in task.labels"):
        load_examples(p, DataConfig(train=str(p)), task)


def test_empty_dataset(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_text("\n\n")
    with pytest.raises(TuneloopError, match="empty"):
        load_examples(p, DataConfig(train=str(p)), TASK)


def test_unknown_format_lists_what_is_expected(tmp_path):
    p = _jsonl(tmp_path / "u.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(TuneloopError, match="cannot tell the format.*data.columns"):
        load_examples(p, DataConfig(train=str(p)), TASK)


def test_binary_file_and_unknown_suffix(tmp_path):
    p = tmp_path / "bin.jsonl"
    p.write_bytes(b"\x00\x01\x02garbage")
    with pytest.raises(TuneloopError, match="not a text file"):
        load_examples(p, DataConfig(train=str(p)), TASK)
    q = tmp_path / "x.xlsx"
    q.write_text("a")
    with pytest.raises(TuneloopError, match="unknown file type"):
        load_examples(q, DataConfig(train=str(q)), TASK)


def test_input_file_never_modified(tmp_path):
    p = tmp_path / "pc.csv"
    p.write_text("prompt,completion\nq,a\nnot,valid,row\n")
    before = hashlib.sha256(p.read_bytes()).hexdigest()
    load_examples(p, DataConfig(train=str(p), skip_invalid=True), TASK)
    assert hashlib.sha256(p.read_bytes()).hexdigest() == before

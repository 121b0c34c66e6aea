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
    # Ids are the line a record starts on, header counted: the second record is on line 4.
    assert [e.id for e in ex] == ["2", "4"]


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


# --- issue 17: bad files are named, never silently reinterpreted ---------------------------

def test_unterminated_csv_quote_is_an_error_at_the_line_it_opened(tmp_path):
    # The csv module reads to the end of the file inside the quote: two records became one.
    p = tmp_path / "q.csv"
    p.write_text('prompt,completion\nq1,a1\nq2,"a2\nq3,a3\nq4,a4\n')
    with pytest.raises(TuneloopError, match=r"q.csv:3: unterminated quote: the quoted field "
                                            r"opened on line 3 never closes"):
        load_examples(p, DataConfig(train=str(p)), TASK)
    loaded = load_examples(p, DataConfig(train=str(p), skip_invalid=True), TASK)
    assert [e.id for e in loaded.examples] == ["2"] and "2 more lines" in loaded.skipped[0]


def test_stray_quote_that_merges_records_is_an_error(tmp_path):
    p = tmp_path / "s.tsv"
    p.write_text('prompt\tcompletion\nq1\t"a1\nq2\ta2\nq3\t"a3"x\nq4\ta4\n')
    with pytest.raises(TuneloopError, match=r"s.tsv:2: stray quote.*lines 2-4"):
        load_examples(p, DataConfig(train=str(p)), TASK)


def test_quoted_fields_that_are_well_formed_still_load(tmp_path):
    p = tmp_path / "ok.csv"
    p.write_text('prompt,completion\n"say ""hi"", then\nleave",ok\nhe said "no",fine\n')
    ex = load_examples(p, DataConfig(train=str(p)), TASK).examples
    assert ex[0].messages[0].content == 'say "hi", then\nleave'
    assert ex[1].messages[0].content == 'he said "no"' and ex[1].id == "4"


def test_bytes_that_are_not_utf8_name_their_line_and_column(tmp_path):
    p = tmp_path / "l.jsonl"
    p.write_bytes(b'{"prompt": "fine", "completion": "ok"}\n'
                  b'{"prompt": "caf\xe9 au lait", "completion": "ok"}\n')
    with pytest.raises(TuneloopError, match=r"l.jsonl:2: invalid UTF-8: byte 0xe9 at column 16"
                                            r".*re-save it as UTF-8"):
        load_examples(p, DataConfig(train=str(p)), TASK)
    loaded = load_examples(p, DataConfig(train=str(p), skip_invalid=True), TASK)
    assert len(loaded.examples) == 1 and "l.jsonl:2: invalid UTF-8" in loaded.skipped[0]
    assert all("\ufffd" not in m.content for e in loaded.examples for m in e.messages)


def test_bad_byte_on_a_continuation_line_of_a_csv_record(tmp_path):
    p = tmp_path / "m.csv"
    p.write_bytes(b'\xef\xbb\xbfprompt,completion\nq1,a1\n"two\nline\x91s",a2\n')
    with pytest.raises(TuneloopError, match=r"m.csv:3: invalid UTF-8: byte 0x91 at line 4, "
                                            r"column 5"):
        load_examples(p, DataConfig(train=str(p)), TASK)


def test_csv_field_over_131072_characters_loads(tmp_path):
    p = tmp_path / "big.csv"
    p.write_text('prompt,completion\n"' + "word " * 40_000 + '",long\nq,short\n')
    ex = load_examples(p, DataConfig(train=str(p)), TASK).examples
    assert len(ex[0].messages[0].content) == 200_000 and ex[1].id == "3"


def test_folder_named_like_a_data_file_is_a_clear_error(tmp_path):
    d = tmp_path / "train.jsonl"
    d.mkdir()
    with pytest.raises(TuneloopError, match=r"train.jsonl: is a folder, not a data file"):
        load_examples(d, DataConfig(train=str(d)), TASK)


def test_pretty_printed_json_array_is_read_as_records(tmp_path):
    rows = [{"prompt": "a", "completion": "b"}, {"id": "x", "prompt": "c", "completion": "d"}]
    p = tmp_path / "arr.json"
    p.write_text(json.dumps(rows, indent=2))
    loaded = load_examples(p, DataConfig(train=str(p)), TASK)
    # Ids are the line each element starts on, as for every other format.
    assert [e.id for e in loaded.examples] == ["2", "x"]
    assert [e.target for e in loaded.examples] == ["b", "d"]
    one_line = tmp_path / "one.jsonl"  # an array on one line, under a .jsonl name
    one_line.write_text(json.dumps(rows))
    assert len(load_examples(one_line, DataConfig(train=str(one_line)), TASK).examples) == 2


def test_broken_json_array_is_one_error_naming_the_line(tmp_path):
    p = tmp_path / "arr.json"
    p.write_text('[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": "c" "completion": "d"}\n]\n')
    with pytest.raises(TuneloopError, match=r"arr.json:3: invalid JSON \(Expecting ',' "
                                            r"delimiter.*one JSON array of records"):
        load_examples(p, DataConfig(train=str(p)), TASK)


def test_jsonl_named_json_and_jsonl_starting_with_an_array_line(tmp_path):
    p = _jsonl(tmp_path / "lines.json", [{"prompt": "a", "completion": "b"},
                                         {"prompt": "c", "completion": "d"}])
    assert len(load_examples(p, DataConfig(train=str(p)), TASK).examples) == 2
    q = tmp_path / "mixed.jsonl"
    q.write_text('[1, 2]\n{"prompt": "a", "completion": "b"}\n')
    with pytest.raises(TuneloopError, match=r"mixed.jsonl:1: expected a JSON object per line"):
        load_examples(q, DataConfig(train=str(q)), TASK)

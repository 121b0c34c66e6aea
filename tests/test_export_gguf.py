"""GGUF export: tiny Llama and Gemma 3 round trips through transformers' GGUF reader, the file's
metadata, the refusals, and `tuneloop export --format gguf` end to end (parity, atomic output)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import write_classification_project, write_rows
from tuneloop.cli import app
from tuneloop.errors import TuneloopError
from tuneloop.export.gguf import _permute_rope, tokenizer_info, write_gguf
from tuneloop.models.load import chat_tokenizer
from tuneloop.models.tokens import end_of_turn_id

runner = CliRunner()
TEXT = "hello world, where is my card? it has not arrived. " * 2


def _fields(path: Path) -> dict:
    from gguf import GGUFReader

    r = GGUFReader(path)
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")} | {
        "_tensors": {t.name: t.tensor_type.name for t in r.tensors}}


def _roundtrip(src: Path, gguf: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    b = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                             dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return a, b, tok


def _write(src: Path, out: Path, quant: str = "f16") -> dict:
    tok = chat_tokenizer(str(src))
    return write_gguf(src, src, out, quant, tokenizer_info(tok, end_of_turn_id(tok)))


def test_tiny_llama_round_trip_f16(tiny_model, tmp_path):
    res = _write(tiny_model, tmp_path / "m.gguf")
    assert res["architecture"] == "llama" and res["tensor_types"] == {"F16": 15, "F32": 5}
    a, b, gtok = _roundtrip(tiny_model, tmp_path / "m.gguf")
    tok = chat_tokenizer(str(tiny_model))
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    assert gtok(TEXT, return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    with torch.no_grad():
        la, lb = a(ids).logits, b(ids).logits
    assert (la - lb).abs().max() < 2e-3  # F16 rounding only
    assert gtok.chat_template == tok.chat_template
    assert (gtok.eos_token, gtok.bos_token, gtok.pad_token) == (tok.eos_token, tok.bos_token,
                                                                tok.pad_token)


def test_gguf_metadata_as_llama_cpp_reads_it(tiny_model, tmp_path):
    _write(tiny_model, tmp_path / "m.gguf")
    f = _fields(tmp_path / "m.gguf")
    tok = chat_tokenizer(str(tiny_model))
    assert f["general.architecture"] == "llama"
    assert f["llama.block_count"] == 2 and f["llama.attention.head_count_kv"] == 2
    assert f["llama.rope.dimension_count"] == 16 and f["llama.context_length"] == 1024
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
    assert f["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert f["tokenizer.ggml.eot_token_id"] == end_of_turn_id(tok)
    assert f["tokenizer.ggml.add_bos_token"] is False  # the template decides, as in training
    assert f["tokenizer.chat_template"] == tok.chat_template
    types = f["tokenizer.ggml.token_type"]
    assert types[tok.convert_tokens_to_ids("<|im_end|>")] == 3  # control token
    tensors = f["_tensors"]
    assert "output.weight" not in tensors  # tied embeddings
    assert tensors["blk.0.attn_q.weight"] == "F16" and tensors["blk.0.attn_norm.weight"] == "F32"


def test_q8_0_quantises_matrices(tiny_model, tmp_path):
    res = _write(tiny_model, tmp_path / "q.gguf", "q8_0")
    assert res["tensor_types"] == {"Q8_0": 15, "F32": 5}
    a, b, _ = _roundtrip(tiny_model, tmp_path / "q.gguf")
    ids = chat_tokenizer(str(tiny_model))(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        la, lb = a(ids).logits, b(ids).logits
    assert (la - lb).abs().max() < 0.05
    assert res["bytes"] < _write(tiny_model, tmp_path / "f.gguf")["bytes"]


def test_rope_permutation_is_what_transformers_undoes():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = np.arange(8 * 2 * 4 * 3, dtype=np.float32).reshape(8 * 8, 3)
    undo = LlamaTensorProcessor(config={"num_attention_heads": 8, "num_key_value_heads": 8})
    back = undo._reverse_permute_weights(_permute_rope(w, 8), 8, 8)
    assert np.array_equal(back, w) and not np.array_equal(_permute_rope(w, 8), w)


def _tiny_gemma3(path: Path, tok_src: Path) -> Path:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = chat_tokenizer(str(tok_src))
    torch.manual_seed(0)
    # head_dim 256 = query_pre_attn_scalar (as in gemma-3-270m; llama.cpp scales by head_dim);
    # 6 layers: five local, one global; a window of 8 tokens, shorter than the test text.
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                           num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=1,
                           head_dim=256, query_pre_attn_scalar=256, sliding_window=8,
                           max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                           initializer_range=0.2)
    model = Gemma3ForCausalLM(cfg)
    with torch.no_grad():  # non-zero norm weights, so the +1 shift is exercised
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.normal_(0, 0.3)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_tiny_gemma3_round_trip(tiny_model, tmp_path):
    src = _tiny_gemma3(tmp_path / "gemma", tiny_model)
    res = _write(src, tmp_path / "g.gguf")
    assert res["architecture"] == "gemma3"
    f = _fields(tmp_path / "g.gguf")
    assert f["gemma3.attention.sliding_window"] == 8 and f["gemma3.attention.key_length"] == 256
    a, b, _ = _roundtrip(src, tmp_path / "g.gguf")
    assert b.config.layer_types == a.config.layer_types
    ids = chat_tokenizer(str(src))(TEXT, return_tensors="pt")["input_ids"]
    assert ids.shape[1] > 8
    with torch.no_grad():
        la, lb = a(ids).logits, b(ids).logits
    assert (la - lb).abs().max() < 2e-2 * la.abs().max()


def test_unsupported_models_are_refused(tiny_model, tmp_path):
    import shutil

    src = tmp_path / "m"
    shutil.copytree(tiny_model, src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(cfg | {"model_type": "qwen2"}))
    with pytest.raises(TuneloopError, match="cannot be exported to GGUF"):
        _write(src, tmp_path / "x.gguf")
    (src / "config.json").write_text(json.dumps(
        cfg | {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}))
    with pytest.raises(TuneloopError, match="rope scaling 'yarn'"):
        _write(src, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_q4_k_m_says_how_without_llama_cpp(tiny_model, tmp_path):
    pytest.importorskip("gguf")
    try:
        import llama_cpp  # noqa: F401
        pytest.skip("llama-cpp-python is installed: q4_k_m works")
    except ImportError:
        pass
    with pytest.raises(TuneloopError, match=r"llama-quantize.*Q4_K_M|\[export\]"):
        _write(tiny_model, tmp_path / "q4.gguf", "q4_k_m")
    assert not list(tmp_path.iterdir())


# ---- the command ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory, learnable_model) -> Path:
    """A tiny LoRA run (learns the two-label task) with a held-out test file."""
    root = tmp_path_factory.mktemp("export-proj")
    write_classification_project(root, learnable_model, n=40, data={"test": "test.jsonl"},
                                 train={"max_steps": 12, "learning_rate": 1e-2},
                                 task={"system_prompt": "Label the message."})
    write_rows(root / "test.jsonl", range(100, 116))
    res = runner.invoke(app, ["train", str(root), "-q", "--set", "output.name=r"])
    assert res.exit_code == 0, res.output
    return root / "runs" / "r"


def test_export_gguf_with_parity_ollama_and_card(run, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["export", str(run), "--out", str(out), "--format", "gguf",
                              "--ollama", "--parity-n", "12", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert sorted(r["files"]) == ["Modelfile", "README.md", "model-f16.gguf", "parity.json"]
    par = r["parity"]["transformers"]
    assert par["prompts"] == 12 and par["agreement"] >= 0.95 and par["metric_within_run_ci"]
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./model-f16.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'SYSTEM """Label the message."""' in modelfile
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_merge_alias_still_writes_safetensors(run, tmp_path):
    res = runner.invoke(app, ["export", str(run), "--merge", str(tmp_path / "m"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["max_logit_diff"] < 1e-3
    assert {"model.safetensors", "config.json", "README.md"} <= {p.name for p in (tmp_path / "m").iterdir()}


def test_failed_parity_exits_1_and_writes_nothing(run, tmp_path, monkeypatch):
    from tuneloop.export import parity

    real = parity.transformers_answers

    def wrong(*a, **k):
        answers, load_s = real(*a, **k)
        return [x + " and more" for x in answers], load_s

    monkeypatch.setattr(parity, "transformers_answers", wrong)
    out = tmp_path / "out"
    res = runner.invoke(app, ["export", str(run), "--out", str(out), "--format", "gguf",
                              "--parity-n", "8"])
    assert res.exit_code == 1
    assert "parity failed" in res.output
    assert list(tmp_path.iterdir()) == []  # neither OUT nor a temp folder


def test_full_disk_is_a_clear_error_with_no_output(run, tmp_path, monkeypatch):
    from tuneloop.export import exporter

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(exporter, "write_gguf", full)
    with pytest.raises(TuneloopError, match="disk is full"):
        exporter.export_run(run, tmp_path / "out", "gguf")
    assert list(tmp_path.iterdir()) == []


def test_export_a_registry_reference(run, tmp_path):
    cfg = run.parent.parent / "tuneloop.yaml"
    res = runner.invoke(app, ["registry", "add", str(run), "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export", "champion", "--config", str(cfg), "--out",
                              str(tmp_path / "c"), "--format", "gguf", "--parity-n", "4", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["source"].endswith("versions/v1")


def test_bad_options_are_user_errors(run, tmp_path):
    for args in (["--out", str(tmp_path / "a"), "--ollama"],
                 ["--out", str(tmp_path / "a"), "--format", "onnx"],
                 ["--out", str(tmp_path / "a"), "--merge", str(tmp_path / "b")]):
        res = runner.invoke(app, ["export", str(run), *args])
        assert res.exit_code != 0 and isinstance(res.exception, TuneloopError), args
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_bundled_smollm2_exports_llama_cpp_layout(tmp_path):
    """The real SmolLM2 (a LoRA whose B is zero, so merged == base): the GGUF has exactly the
    tensor names and shapes llama.cpp itself wrote into the bundled GGUF, and parity holds."""
    import yaml
    from gguf import GGUFReader
    from peft import LoraConfig, get_peft_model

    from tuneloop.models.catalog import CATALOG, gguf_path
    from tuneloop.models.load import load_model, resolve_model, tuneloop_home

    example = Path(__file__).resolve().parents[1] / "examples" / "support-intents"
    base = resolve_model("smollm2-135m-instruct")
    run = tmp_path / "run"
    model = get_peft_model(load_model(base), LoraConfig(r=8, lora_alpha=16,
                                                        target_modules="all-linear"))
    model.save_pretrained(run / "adapter")
    chat_tokenizer(base).save_pretrained(run / "tokenizer")
    cfg = yaml.safe_load((example / "tuneloop.yaml").read_text())
    for k in ("train", "test"):
        cfg["data"][k] = str(example / cfg["data"][k])
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    from tuneloop.export.exporter import export_run

    res = export_run(run, tmp_path / "out", "gguf", ollama=True, parity_n=4)
    assert res["parity"]["transformers"]["agreement"] == 1.0
    ours = {t.name: tuple(t.shape) for t in GGUFReader(tmp_path / "out" / "model-f16.gguf").tensors}
    ref = GGUFReader(gguf_path(CATALOG["smollm2-135m-instruct"], tuneloop_home()))
    assert ours == {t.name: tuple(t.shape) for t in ref.tensors}


def test_unsupported_base_is_refused_before_merging(run, tmp_path):
    import shutil

    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    base = tmp_path / "base"
    shutil.copytree(cfg["model"]["name"], base)
    conf = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps(conf | {"model_type": "phi3"}))
    other = tmp_path / "run"
    shutil.copytree(run, other)
    cfg["model"]["name"] = str(base)
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["export", str(other), "--out", str(tmp_path / "o"), "--format", "gguf"])
    assert isinstance(res.exception, TuneloopError) and "'phi3' cannot be exported" in str(res.exception)
    assert not (tmp_path / "o").exists()


def test_near_ties_are_counted_apart(run):
    from tuneloop.export.parity import NEAR_TIE, compare
    from tuneloop.runs import read_run_config

    cfg = read_run_config(run)
    from tuneloop.export.parity import parity_examples

    ex, _ = parity_examples(cfg, 4)
    run_a = ["card_arrival", "exchange_rate", "card_arrival", "x"]
    file_a = ["card_arrival", "card_arrival", "exchange_rate", "x"]
    r = compare(cfg, ex, run_a, file_a, margins=[None, NEAR_TIE / 10, 5.0, None])
    assert r["agreement"] == 0.5 and r["near_ties"] == 1 and r["agreement_with_ties"] == 0.75
    assert [d["run_margin"] for d in r["disagreements"]] == [NEAR_TIE / 10, 5.0]

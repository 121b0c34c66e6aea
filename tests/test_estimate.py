"""The dry-run cost model against what a real step of the tiny model does.

FLOPs are compared with torch's own FLOP counter and saved activations with autograd's
saved-tensor hooks on a real forward: both deterministic, so these tests hold on a loaded
machine (wall-clock predictions are checked by benchmarks/estimate_accuracy.py, not here).
"""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tuneloop.config import MethodConfig, load_config
from tuneloop.models.load import choose_placement, resolve_model
from tuneloop.train import calibrate
from tuneloop.train.batches import micro_batch, plan_for
from tuneloop.train.estimate import dry_run
from tuneloop.train.loss import TargetLoss
from tuneloop.train.methods import count_parameters, wrap

# The tiny Llama (tests/tiny.py): hidden 64, MLP 128, 2 layers, 4 heads of 16, 2 kv heads.
H, INTER, LAYERS, Q, KV = 64, 128, 2, 64, 32
BODY = LAYERS * (H * Q + 2 * H * KV + Q * H + 3 * H * INTER)  # q, k, v, o and the three MLP matmuls
LORA = LAYERS * 16 * ((H + Q) + 2 * (H + KV) + (Q + H) + 2 * (H + INTER) + (INTER + H))  # r=16


def _config(tiny_model):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(tiny_model)


def _real(tiny_model, method: MethodConfig, input_grads: bool, attention: str = "eager"):
    """The tiny model; eager attention by default, whose matmuls torch's FLOP counter sees."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = wrap(AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attention), method)
    if input_grads:  # the formula counts every layer's input gradient; autograd skips layer 0's
        model.enable_input_require_grads()
    return model.train()


def _counted_flops(model, batch) -> int:
    loss = TargetLoss(model)
    with FlopCounterMode(display=False) as counter:
        total, n = loss(model, batch)
        (total / n).backward()
    loss.remove()
    return counter.get_total_flops()


def test_model_sizes_are_the_hand_count(tiny_model):
    sizes = calibrate.model_sizes(_config(tiny_model))
    vocab = _config(tiny_model).vocab_size
    assert sizes == {"body": BODY, "head": vocab * H, "layers": LAYERS, "hidden": H, "attn_width": Q}


@pytest.mark.parametrize("full", [False, True], ids=["lora", "full"])
def test_step_flops_equal_torchs_count_of_a_real_step(tiny_model, full):
    model = _real(tiny_model, MethodConfig(name="full" if full else "lora", dropout=0.0),
                  input_grads=not full)
    trainable, _ = count_parameters(model)
    assert full or trainable == LORA
    rows, width = 3, 40
    ids = torch.randint(3, 300, (rows, width), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :25] = -100
    targets = int((labels[:, 1:] != -100).sum())
    predicted = calibrate.step_flops(calibrate.model_sizes(model.config), full, 0 if full else LORA,
                                     rows * width, width, targets)
    assert _counted_flops(model, {"input_ids": ids, "labels": labels}) == predicted


def _real_saved_bytes(model, rows: int, width: int) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    ids = torch.randint(3, 300, (rows, width), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, use_cache=False, logits_to_keep=torch.empty(0, dtype=torch.long))
    return total


# 64 and 128 are the tiny model's hidden and MLP sizes: a width equal to one of them once made
# those activations look like attention maps, and the count dropped them.
@pytest.mark.parametrize("width", [32, 64, 128])
def test_activation_bytes_match_a_real_forward(tiny_model, width):
    meta = calibrate.meta_model(_config(tiny_model), MethodConfig(dropout=0.0))
    counted = calibrate.saved_activation_bytes(meta, 2, width)
    # The real model on CPU: sdpa's fused kernel keeps no attention map, only a small logsumexp.
    real = _real(tiny_model, MethodConfig(dropout=0.0), input_grads=False, attention="sdpa")
    grows = _real_saved_bytes(real, 4, width) - _real_saved_bytes(real, 2, width)
    assert counted == pytest.approx(grows, rel=0.01)
    assert calibrate.saved_activation_bytes(meta, 4, width) == pytest.approx(2 * counted, rel=1e-6)
    assert calibrate.saved_activation_bytes(meta, 2, 2 * width) == pytest.approx(2 * counted, rel=1e-6)


def _cache(tmp_path, monkeypatch, cfg, cal: dict) -> None:
    """A cached calibration for `cfg`'s placement, so the dry run measures nothing."""
    home = tmp_path / "home"
    monkeypatch.setenv("TUNELOOP_HOME", str(home))
    home.mkdir(exist_ok=True)
    placement = choose_placement(cfg.model.device, cfg.model.dtype)
    key = calibrate.calibration_key(placement, resolve_model(cfg.model.name), cfg.train.cpu_kernels)
    (home / "calibration.json").write_text(json.dumps({key: cal}))


def test_dry_run_predicts_the_planned_steps_flops(tiny_project, tmp_path, monkeypatch, tiny_model):
    # At 1 FLOP/s and no fixed cost, the predicted seconds of a step are its predicted FLOPs.
    cfg = load_config(tiny_project, ["train.max_steps=1", "method.dropout=0", "train.batch_size=6"])
    _cache(tmp_path, monkeypatch, cfg,
           {"base_rss": 4e8, "flops_per_s": 1.0, "seconds_per_param": 0.0, "activation_factor": 1.0})
    est = dry_run(cfg)["estimate"]
    assert est["calibration"]["cached"] is True
    assert (est["trainable_params"], est["steps"]) == (LORA, 1)
    # The same micro-batch, trained for real: torch counts its FLOPs.
    from tuneloop.data.load import load_splits
    from tuneloop.models.load import load_tokenizer
    from tuneloop.models.tokens import encode_all, ensure_template

    tok = load_tokenizer(str(tiny_model))
    ensure_template(tok)
    items, _ = encode_all(tok, load_splits(cfg).train, cfg.model.max_seq_len, cfg.train.loss_on)
    batch = micro_batch([items[i] for i in plan_for(cfg, items).indices(0)], tok.pad_token_id, cfg)
    exact = _counted_flops(_real(tiny_model, cfg.method, input_grads=True), batch)
    real = _counted_flops(_real(tiny_model, cfg.method, input_grads=False), batch)
    assert est["predicted_step_seconds"] == pytest.approx(exact, rel=1e-6)
    # A real LoRA step skips the first layer's input gradients: at most 1/layers of the body less.
    assert real < exact < real * (1 + 1 / LAYERS)

    # Twice the FLOP rate halves the step; a fixed cost per parameter adds exactly that.
    _cache(tmp_path, monkeypatch, cfg,
           {"base_rss": 4e8, "flops_per_s": 2.0, "seconds_per_param": 1e-3, "activation_factor": 1.0})
    est2 = dry_run(cfg)["estimate"]
    fixed = 1e-3 * est["total_params"]
    assert est2["predicted_step_seconds"] == pytest.approx(exact / 2 + fixed, rel=1e-6)
    assert est2["calibration"]["fixed_seconds_per_micro_batch"] == pytest.approx(fixed, abs=1e-3)


def test_dry_run_memory_counts_the_largest_planned_micro_batch(tiny_project, tmp_path, monkeypatch):
    cfg = load_config(tiny_project, ["model.dtype=fp32", "train.max_steps=4"])
    model_path = resolve_model(cfg.model.name)

    def peak(factor: float) -> float:
        _cache(tmp_path, monkeypatch, cfg, {"base_rss": 2**30, "flops_per_s": 1e10,
                                            "seconds_per_param": 0.0, "activation_factor": factor})
        return dry_run(cfg)["estimate"]["estimated_peak_memory_gb"] * 2**30

    # Scaled up, so the activations show in a figure rounded to 0.01 GB.
    activations = (peak(3e5) - peak(1e5)) / 2e5
    from tuneloop.data.load import load_splits
    from tuneloop.models.load import load_tokenizer
    from tuneloop.models.tokens import encode_all, ensure_template

    tok = load_tokenizer(model_path)
    ensure_template(tok)
    items, _ = encode_all(tok, load_splits(cfg).train, cfg.model.max_seq_len, cfg.train.loss_on)
    plan = plan_for(cfg, items)
    shapes = [micro_batch([items[i] for i in plan.indices(k)], 0, cfg)["input_ids"].shape
              for k in range(4)]
    rows, width = max(shapes, key=lambda s: s[0] * s[1])
    meta = calibrate.meta_model(_config(model_path), cfg.method)
    assert activations == pytest.approx(calibrate.saved_activation_bytes(meta, rows, width), rel=0.01)

    # The LM head's chunk is priced for the most targets of a planned micro-batch, in fp32, and
    # adds to the peak; the parts add up to it.
    from tuneloop.train import estimate as estimate_mod

    seen = []

    def head(vocab, targets, half):
        seen.append((vocab, targets, half))
        return 3 * 2**30

    before = dry_run(cfg)["estimate"]
    monkeypatch.setattr(estimate_mod, "head_chunk_bytes", head)
    after = dry_run(cfg)["estimate"]
    targets = max(int((micro_batch([items[i] for i in plan.indices(k)], 0, cfg)["labels"][:, 1:]
                       != -100).sum()) for k in range(4))
    assert seen == [(_config(model_path).vocab_size, targets, False)]
    assert after["estimated_peak_memory_gb"] == pytest.approx(
        before["estimated_peak_memory_gb"] - before["memory_breakdown_gb"]["lm_head_chunk"] + 3,
        abs=0.01)
    assert sum(after["memory_breakdown_gb"].values()) == pytest.approx(
        after["estimated_peak_memory_gb"], abs=0.01)
    assert calibrate.head_chunk_bytes(262_144, 1000, False) == 256 * 262_144 * 8


def test_packing_lowers_the_padding_and_the_step(tiny_project, tmp_path, monkeypatch):
    padded_cfg = load_config(tiny_project)
    packed_cfg = load_config(tiny_project, ["train.packing=true"])
    cal = {"base_rss": 4e8, "flops_per_s": 1e9, "seconds_per_param": 0.0, "activation_factor": 1.0}
    _cache(tmp_path, monkeypatch, padded_cfg, cal)
    padded = dry_run(padded_cfg)["estimate"]
    packed = dry_run(packed_cfg)["estimate"]
    assert packed["padding_fraction"] == 0 < padded["padding_fraction"]
    assert packed["planned_tokens"] == padded["planned_tokens"]  # the same examples
    assert packed["predicted_step_seconds"] < padded["predicted_step_seconds"]

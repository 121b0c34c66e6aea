"""The dry-run cost model: FLOP counts, meta-device activation counts, cached calibration."""

import json

import pytest

from tuneloop.config import MethodConfig, load_config
from tuneloop.models.load import choose_placement, resolve_model
from tuneloop.train import calibrate
from tuneloop.train.estimate import dry_run


def _config(tiny_model):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(tiny_model)


def test_flops_count_weight_gradients_only_for_full(tiny_model):
    sizes = calibrate.model_sizes(_config(tiny_model))
    lora = calibrate.step_flops(sizes, False, 0, positions=100, width=50, targets=10)
    full = calibrate.step_flops(sizes, True, 0, positions=100, width=50, targets=10)
    assert full == pytest.approx(lora * 1.5, rel=0.1)  # 6N vs 4N per token
    assert calibrate.step_flops(sizes, False, 0, 100, 50, 20) > lora  # the head costs per target


def test_activation_bytes_are_counted_without_memory(tiny_model):
    model = calibrate.meta_model(_config(tiny_model), MethodConfig())
    one = calibrate.saved_activation_bytes(model, 1, 32)
    four = calibrate.saved_activation_bytes(model, 4, 32)
    assert one > 0 and four == pytest.approx(4 * one, rel=0.05)


def test_dry_run_predicts_from_a_cached_calibration(tiny_project, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    placement = choose_placement()
    cal = {"base_rss": 4e8, "flops_per_s": 1e10, "seconds_per_param": 1e-8, "activation_factor": 1.2}
    (tmp_path / "home").mkdir()
    model_path = resolve_model(load_config(tiny_project).model.name)
    (tmp_path / "home" / "calibration.json").write_text(
        json.dumps({calibrate.calibration_key(placement, model_path): cal}))
    est = dry_run(load_config(tiny_project))["estimate"]
    assert est["calibration"]["cached"] is True
    assert est["predicted_step_seconds"] > 0 and est["estimated_train_minutes"] > 0
    assert est["estimated_peak_memory_gb"] > 4e8 / 2**30
    packed = dry_run(load_config(tiny_project, ["train.packing=true", "model.max_seq_len=512"]))
    assert packed["estimate"]["padding_fraction"] < est["padding_fraction"]

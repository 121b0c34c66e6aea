import json

import pytest
import torch
from safetensors.torch import load_file

from tuneloop.config import load_config
from tuneloop.train import progress
from tuneloop.train.recipe import train


def _losses(run):
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


def test_run_folder_has_everything(tiny_project):
    run, summary = train(load_config(tiny_project), quiet=True)
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "environment.json", "data.json",
                 "adapter/adapter_model.safetensors", "tokenizer/tokenizer.json"):
        assert (run / name).exists(), name
    data = json.loads((run / "data.json").read_text())
    assert len(data["fingerprint"]["train"]) == 64
    assert data["counts"]["train"] + data["counts"]["validation"] == 40
    assert summary["steps"] == summary["planned_steps"] == 18
    assert summary["val_loss"] is not None and summary["trainable_params"] < summary["total_params"]


@pytest.mark.parametrize("method,lr", [("lora", 5e-3), ("dora", 5e-3), ("ia3", 0.5),
                                       ("prefix", 0.3), ("prompt", 0.3), ("full", 1e-3)])
def test_each_method_lowers_loss_on_a_repeated_batch(tiny_project, method, lr):
    # 4 examples, batch 4: every step sees the same batch, so loss must fall.
    cfg = load_config(tiny_project, [f"method.name={method}", f"train.learning_rate={lr}",
                                     "train.max_steps=15", "train.warmup_ratio=0",
                                     "data.max_examples=4", "data.validation_fraction=0",
                                     "method.dropout=0", f"output.name={method}"])
    run, _ = train(cfg, quiet=True)
    losses = _losses(run)
    assert losses[-1] < losses[0] - 0.05, losses  # nats; prompt tuning moves least
    saved = run / ("model" if method == "full" else "adapter")
    assert any(saved.glob("*.safetensors"))


def _interrupt_at(monkeypatch, step: int, exc: type[BaseException]):
    """Raise `exc` right after step `step` is logged: between steps."""
    real = progress.MetricsLog.write

    def write(self, rec):
        real(self, rec)
        if rec.get("step") == step and "loss" in rec:
            raise exc("simulated interruption")

    monkeypatch.setattr(progress.MetricsLog, "write", write)


def _interrupt_inside(monkeypatch, step: int, micro: int, ga: int) -> list[int]:
    """Raise KeyboardInterrupt in the forward of micro-batch `micro` (1-based) of step `step`.

    By then the step's earlier micro-batches have drawn dropout masks and left gradients
    behind; returns a list that records each training forward (validation runs without grad).
    """
    from tuneloop.train.loss import TargetLoss

    real, calls = TargetLoss.__call__, []

    def call(self, model, batch):
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == (step - 1) * ga + micro:
                raise KeyboardInterrupt("simulated Ctrl-C inside a step")
        return real(self, model, batch)

    monkeypatch.setattr(TargetLoss, "__call__", call)
    return calls


@pytest.mark.parametrize("exc,at", [(KeyboardInterrupt, 7), (RuntimeError, 8)])
def test_resume_reaches_the_same_final_metrics(tiny_project, monkeypatch, exc, at):
    # dropout on: the resumed run must also restore the RNG to match bit for bit
    base = ["method.dropout=0.1", "train.save_every=5"]
    full_run, full = train(load_config(tiny_project, base + ["output.name=full"]), quiet=True)
    cfg = load_config(tiny_project, base + ["output.name=cut"])
    _interrupt_at(monkeypatch, at, exc)
    with pytest.raises(exc):
        train(cfg, quiet=True)
    monkeypatch.undo()
    # KeyboardInterrupt saves at step 7; a crash resumes from the periodic checkpoint at 5
    run, resumed = train(cfg, resume=cfg.output.dir + "/cut", quiet=True)
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], rel=1e-5)
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], rel=1e-5)
    assert _losses(run) == pytest.approx(_losses(full_run), rel=1e-5)
    a = load_file(str(full_run / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def _interrupt_after_update(monkeypatch, step: int) -> list[int]:
    """Raise KeyboardInterrupt once step `step`'s update is applied, before the loop records it."""
    from tuneloop.train import step as step_mod

    calls = []

    def release():
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt("simulated Ctrl-C after the optimizer step")

    monkeypatch.setattr(step_mod, "release_freed_memory", release)
    return calls


@pytest.mark.parametrize("where", ["second_forward", "after_update"])
def test_interrupt_inside_a_step_resumes_bit_for_bit(tiny_project, monkeypatch, where):
    """Ctrl-C inside step 7: the resumed run gives exactly the uninterrupted run's numbers."""
    # second_forward: dropout on and 2 micro-batches per step, so the replay must restore the RNG
    # of the step's start (the first micro-batch already drew its masks) and drop its
    # half-summed gradients; a checkpoint at step 6 is written. after_update: the weights have
    # moved but step 7 is not recorded, so no checkpoint may be written; step 5's is resumed.
    base = ["method.dropout=0.1", "train.grad_accum=2", "train.batch_size=2", "train.save_every=5",
            "train.max_steps=10", "model.device=cpu"]
    full_run, full = train(load_config(tiny_project, base + ["output.name=full"]), quiet=True)
    cfg = load_config(tiny_project, base + ["output.name=cut"])
    if where == "second_forward":
        calls, expected = _interrupt_inside(monkeypatch, step=7, micro=2, ga=2), 6 * 2 + 2
    else:
        calls, expected = _interrupt_after_update(monkeypatch, step=7), 7
    with pytest.raises(KeyboardInterrupt):
        train(cfg, quiet=True)
    monkeypatch.undo()
    assert len(calls) == expected  # it did stop inside step 7
    ckpts = sorted(p.name for p in (tiny_project.parent / "runs" / "cut" / "checkpoints").iterdir())
    assert ckpts == (["step-0000005", "step-0000006"] if where == "second_forward" else ["step-0000005"])
    run, resumed = train(cfg, resume=cfg.output.dir + "/cut", quiet=True)
    assert _losses(run) == _losses(full_run)  # bit for bit: same floats, same count
    assert (resumed["train_loss"], resumed["val_loss"]) == (full["train_loss"], full["val_loss"])
    a = load_file(str(full_run / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_metrics(tiny_project):
    cfg = load_config(tiny_project, ["train.max_steps=4"])
    _, s1 = train(cfg.model_copy(update={"output": cfg.output.model_copy(update={"name": "a"})}),
                  quiet=True)
    _, s2 = train(cfg.model_copy(update={"output": cfg.output.model_copy(update={"name": "b"})}),
                  quiet=True)
    assert s1["train_loss"] == s2["train_loss"] and s1["val_loss"] == s2["val_loss"]


def test_early_stopping_keeps_best_weights(tiny_project):
    cfg = load_config(tiny_project, ["train.learning_rate=0.5", "train.eval_every=1",
                                     "train.early_stopping_patience=2", "train.epochs=10",
                                     "output.name=es"])
    _, s = train(cfg, quiet=True)
    assert s["stopped_early"] and s["steps"] < s["planned_steps"]
    assert s["weights"] == "best" and s["best_step"] <= s["steps"]


def test_existing_run_folder_is_not_overwritten(tiny_project):
    from tuneloop.errors import TuneloopError

    cfg = load_config(tiny_project, ["train.max_steps=1", "output.name=same"])
    train(cfg, quiet=True)
    with pytest.raises(TuneloopError, match="already exists"):
        train(cfg, quiet=True)


def test_init_adapter_continues_from_saved_weights(tiny_project):
    from tuneloop.errors import TuneloopError

    first, _ = train(load_config(tiny_project, ["train.max_steps=3", "output.name=first"]), quiet=True)
    start = load_file(first / "adapter" / "adapter_model.safetensors")
    cfg = load_config(tiny_project, ["train.max_steps=1", "train.learning_rate=1e-12",
                                     f"method.init_adapter={first / 'adapter'}", "output.name=second"])
    second, _ = train(cfg, quiet=True)
    after = load_file(second / "adapter" / "adapter_model.safetensors")
    assert start.keys() == after.keys()
    # A near-zero learning rate keeps the weights where the first run left them (LoRA B != 0).
    assert any(v.abs().sum() > 0 for k, v in start.items() if "lora_B" in k)
    assert all(torch.allclose(start[k], after[k], atol=1e-6) for k in start)
    with pytest.raises(TuneloopError, match="adapter_config.json"):
        train(load_config(tiny_project, ["method.init_adapter=/nonexistent", "output.name=x"]),
              quiet=True)


# ---- checkpoints: nothing unsafe to load, corruption named, a full disk reported -----------------
class _RunsCode:
    """Unpickling this runs a shell command: what a crafted checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch '{self.marker}'",)


def _checkpoint_folder(path, state_pt: bytes):
    """A checkpoint folder with real weights and loop state around the given state.pt bytes."""
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(path / "trainable.safetensors"))
    (path / "loop.json").write_text(json.dumps({"step": 1}))
    (path / "state.pt").write_bytes(state_pt)
    return path


@pytest.mark.parametrize("fmt", ["torch.save", "raw pickle"])
def test_a_crafted_checkpoint_is_refused_and_runs_no_code(tmp_path, fmt):
    import io
    import pickle

    from tuneloop.errors import TuneloopError
    from tuneloop.train import checkpoint

    marker = tmp_path / "PWNED"
    buf = io.BytesIO()
    payload = {"optimizer": _RunsCode(marker), "scheduler": {}, "rng": {}}
    torch.save(payload, buf) if fmt == "torch.save" else pickle.dump(payload, buf, protocol=2)
    ckpt = _checkpoint_folder(tmp_path / "step-0000001", buf.getvalue())
    with pytest.raises(TuneloopError, match=r"state.pt: refused to load it.*posix.system") as e:
        checkpoint.read(ckpt)
    assert not isinstance(e.value, checkpoint.CorruptCheckpoint)  # refused, not skipped over
    assert not marker.exists()


def test_checkpoint_state_is_plain_data_and_old_numpy_rng_state_still_loads(tiny_project, tmp_path):
    import io
    import random

    import numpy as np

    from tuneloop.train import checkpoint

    run, _ = train(load_config(tiny_project, ["train.max_steps=2", "train.save_every=2",
                                              "output.name=plain"]), quiet=True)
    state = torch.load(run / "checkpoints" / "step-0000002" / "state.pt", weights_only=True)
    assert set(state) == {"optimizer", "scheduler", "rng"}  # loads with no allow-list at all
    # A checkpoint written before the RNG state was plain data holds numpy's state as an ndarray.
    np.random.seed(7)
    buf = io.BytesIO()
    torch.save({"optimizer": {}, "scheduler": {}, "rng": {
        "python": random.getstate(), "numpy": np.random.get_state(),
        "torch": torch.get_rng_state()}}, buf)
    expect = np.random.rand(3)
    old = checkpoint.read(_checkpoint_folder(tmp_path / "step-0000001", buf.getvalue()))
    checkpoint.set_rng_state(old.state["rng"])
    assert np.array_equal(np.random.rand(3), expect)


def test_resume_without_a_checkpoint_is_an_error_not_a_restart(tiny_project):
    from tuneloop.errors import TuneloopError

    cfg = load_config(tiny_project, ["train.max_steps=2", "train.save_every=100", "output.name=nock"])
    run, _ = train(cfg, quiet=True)
    before = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(TuneloopError, match="no checkpoint to resume from"):
        train(cfg, resume=run, quiet=True)
    assert (run / "metrics.jsonl").read_bytes() == before  # no duplicated rows


def test_a_corrupt_latest_checkpoint_resumes_from_the_older_one_bit_for_bit(tiny_project, monkeypatch,
                                                                            capsys):
    base = ["method.dropout=0.1", "train.save_every=2", "train.max_steps=8"]
    full_run, _ = train(load_config(tiny_project, base + ["output.name=full"]), quiet=True)
    cfg = load_config(tiny_project, base + ["output.name=cut"])
    _interrupt_at(monkeypatch, 7, RuntimeError)
    with pytest.raises(RuntimeError):
        train(cfg, quiet=True)
    monkeypatch.undo()
    latest = tiny_project.parent / "runs" / "cut" / "checkpoints" / "step-0000006"
    state = latest / "state.pt"
    state.write_bytes(state.read_bytes()[:100])  # torn
    run, _ = train(cfg, resume=latest.parent.parent, quiet=True)
    err = "".join(capsys.readouterr().err.split())
    assert "skippingacorruptcheckpoint:" + "".join(str(state).split()) in err
    assert "resumingfrom" + "".join(str(latest.parent / "step-0000004").split()) in err
    assert _losses(run) == _losses(full_run)
    a = load_file(str(full_run / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_full_disk_during_a_checkpoint_is_named_and_leaves_no_temp_folder(tiny_project, monkeypatch):
    import errno
    import os

    from tuneloop.errors import TuneloopError
    from tuneloop.train import checkpoint

    real, calls = checkpoint.save_file, []

    def save_file(tensors, filename, *a, **k):
        calls.append(filename)
        if len(calls) == 2:
            with open(filename, "wb") as f:
                f.write(b"\0" * 4096)  # part of the file is on disk when space runs out
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return real(tensors, filename, *a, **k)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    cfg = load_config(tiny_project, ["train.max_steps=4", "train.save_every=1", "output.name=full"])
    with pytest.raises(TuneloopError, match=r"step-0000002: could not write.*No space left on "
                                            r"device.*step-0000001 is intact.*--resume"):
        train(cfg, quiet=True)
    ckpts = tiny_project.parent / "runs" / "full" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000001"]  # no .tmp-step-* left
    assert checkpoint.read(ckpts / "step-0000001").loop["step"] == 1

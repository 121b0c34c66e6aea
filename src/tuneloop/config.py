"""tuneloop.yaml as pydantic models: one section per stage of the loop.

Errors name the file, the key and the fix. Relative data paths resolve against the config
file's folder, so a project folder can be moved or run from anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tuneloop.errors import TuneloopError

DEFAULT_CLASSIFY_TEMPLATE = (
    "Classify the text into exactly one of these labels: {labels}.\n\n"
    "Text: {text}\n\nAnswer with the label only."
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the examples are and how to read them."""

    train: str = Field(description="Training file (.jsonl, .csv, .tsv, .parquet).")
    validation: str | None = Field(None, description="Validation file; else split from train.")
    test: str | None = Field(None, description="Held-out test file for evaluation.")
    format: Literal["auto", "chat", "prompt_completion", "alpaca", "text_label"] = Field(
        "auto", description="Record format; auto detects it from the keys of the first row.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Map canonical names to your column names, e.g. {text: utterance, label: intent}.")
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0,
                                       description="Share of train held out when no validation file.")
    max_examples: int | None = Field(None, ge=1, description="Use at most this many training rows.")
    skip_invalid: bool = Field(False, description="Skip invalid records (and report the count).")


class TaskConfig(_Section):
    """What the model should do; decides rendering and metrics."""

    type: Literal["classification", "extraction", "generation", "chat"] = "chat"
    labels: list[str] | None = Field(None, description="The label list (classification).")
    prompt_template: str | None = Field(
        None, description="User turn for text/label rows; may use {text} and {labels}.")
    baseline_template: str | None = Field(
        None, description="User turn for the prompted base model (zero/few-shot) on text/label rows; "
                          "default: prompt_template if it lists {labels}, else a label-list instruction.")
    system_prompt: str | None = Field(None, description="System turn added to every example.")

    def baseline_prompt(self) -> str:
        """The instruction a base model needs: a fine-tuned model may do with less."""
        if self.baseline_template:
            return self.baseline_template
        if self.prompt_template and "{labels}" in self.prompt_template:
            return self.prompt_template
        return DEFAULT_CLASSIFY_TEMPLATE

    @model_validator(mode="after")
    def _labels_unique(self) -> TaskConfig:
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        return self


class ModelConfig(_Section):
    """The base model and where it runs."""

    name: str = Field("smollm2-135m-instruct",
                      description="Catalog name, local Hugging Face folder, or hub id.")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 on CUDA and on CPUs with AMX/avx512_bf16, else fp32.")
    max_seq_len: int = Field(512, ge=8, description="Longer examples are truncated (and counted).")


class MethodConfig(_Section):
    """The fine-tuning method (peft) and its knobs."""

    name: Literal["lora", "dora", "ia3", "prefix", "prompt", "full"] = "lora"
    r: int = Field(16, ge=1, description="LoRA/DoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA/DoRA scaling alpha.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    num_virtual_tokens: int = Field(20, ge=1, description="Prefix/prompt tuning length.")
    init_adapter: str | None = Field(
        None, description="Start from this saved adapter folder (incremental re-training); "
                          "its own peft config replaces r/alpha/targets.")
    quantize: Literal["4bit"] | None = Field(
        None, description="QLoRA: load the frozen base in 4-bit (bitsandbytes NF4; CUDA only).")

    @property
    def adds_virtual_tokens(self) -> bool:
        """Prefix and prompt tuning prepend learnt vectors: nothing to merge into the weights."""
        return self.name in ("prefix", "prompt")


class TrainConfig(_Section):
    """Optimisation: AdamW with warm-up plus cosine decay."""

    epochs: float = Field(3, gt=0)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch per process.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    eval_every: int = Field(50, ge=1, description="Validation loss every N optimizer steps.")
    save_every: int = Field(100, ge=1, description="Checkpoint every N optimizer steps.")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after N evaluations without validation-loss improvement.")
    loss_on: Literal["assistant", "all"] = Field(
        "assistant", description="assistant: loss on assistant tokens only (prompt masked).")
    packing: bool = Field(
        False, description="Lay each micro-batch's examples end to end in one row (no padding); "
                           "position_ids restart and attention runs per example, so nothing leaks "
                           "between examples.")
    group_by_length: bool = Field(
        False, description="Without packing: batch examples of similar length (less padding).")
    gradient_checkpointing: bool = Field(
        False, description="Recompute each layer's activations in the backward pass: far less "
                           "memory for about a third more compute.")
    sample_every: int | None = Field(
        None, ge=1, description="Every N optimizer steps, generate answers for a few fixed "
                                "validation prompts into samples.jsonl (see the form being learnt).")
    sample_prompts: int = Field(3, ge=1, le=20, description="How many validation prompts to sample.")
    cpu_kernels: Literal["auto", "off"] = Field(
        "auto", description="auto: on CPU, train listed architectures (Llama, Mistral, Qwen2/3, "
                            "Gemma 3) with tuneloop's kernels (fused LoRA, lean RMSNorm/SwiGLU, "
                            "packed-attention backward, cheaper dropout, frozen weights in bf16); "
                            "off: plain peft + transformers.")

    @model_validator(mode="before")
    @classmethod
    def _off_is_not_false(cls, data: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false; `cpu_kernels: off` means "off".
        if isinstance(data, dict) and data.get("cpu_kernels") is False:
            data = {**data, "cpu_kernels": "off"}
        return data


class JudgeConfig(_Section):
    """An LLM judge behind any OpenAI-compatible endpoint (pairwise, both orders)."""

    base_url: str = Field(description="Endpoint root, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(description="Model name the endpoint expects.")
    api_key_env: str | None = Field(
        None, description="Env var holding the bearer key; unset: no Authorization header.")
    max_examples: int = Field(50, ge=1, description="Judge at most N examples per baseline.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")


class EvalConfig(_Section):
    """Evaluation after training."""

    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(64, ge=1)
    max_examples: int | None = Field(None, ge=1, description="Evaluate at most N test examples.")
    few_shot_k: int = Field(4, ge=0)
    generate_sample: int | None = Field(
        50, ge=1, description="Classification: free-generate answers (for parse-failure rates) "
                              "on the first N examples only; null: on all. Labels are always "
                              "scored on every example.")
    corpus: str | None = Field(
        None, description="Documents for retrieval-augmented prompting (the `rag` baseline): a "
                          ".jsonl/.csv (a text/content/document column) or a folder of .txt/.md.")
    rag_k: int = Field(3, ge=1, description="Corpus chunks put into each RAG prompt.")
    chunk_chars: int = Field(1000, ge=100, description="Corpus chunk size in characters "
                                                       "(cut at paragraph/sentence ends).")
    finetuned_rag: bool = Field(
        False, description="Also evaluate the fine-tuned model with the retrieved chunks in its "
                           "prompt (`finetuned_rag`; needs eval.corpus).")
    judge: JudgeConfig | None = Field(
        None, description="Pairwise LLM judge of finetuned vs each baseline (optional).")


class OutputConfig(_Section):
    """Where runs go."""

    dir: str = Field("runs", description="Parent folder of run folders (relative to the config).")
    name: str | None = Field(None, description="Run folder name; default: method-timestamp.")


class RegistryConfig(_Section):
    """Where model versions and their aliases (champion, challenger) live."""

    dir: str = Field("registry", description="Registry folder (relative to the config).")


class ServeConfig(_Section):
    """The OpenAI-compatible server and its traffic log."""

    store_url: str | None = Field(
        None, description="SQLAlchemy URL of the traffic store; default: sqlite file in the registry.")
    api_key_env: str = Field("TUNELOOP_API_KEY",
                             description="Env var holding the bearer API key (required off loopback).")
    max_tokens: int = Field(512, ge=1, description="Upper bound on max_tokens per request.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest accepted request body.")
    max_stop_strings: int = Field(16, ge=0, le=1024,
                                  description="Most stop strings per request (OpenAI allows 4).")
    max_stop_chars: int = Field(64, ge=1, le=4096, description="Longest stop string, in characters.")
    max_messages: int = Field(256, ge=1, description="Most messages in one chat request.")
    max_message_chars: int = Field(100_000, ge=1,
                                   description="Longest message (or completions prompt), in characters.")
    max_prompt_tokens: int = Field(8192, ge=1, description="Most prompt tokens after the chat template.")
    request_timeout_s: float = Field(
        120.0, gt=0, description="Deadline of one request (queueing included): generation stops and "
                                 "the client gets 504, logged as such.")
    shutdown_timeout_s: float = Field(
        10.0, ge=0, description="On SIGINT/SIGTERM, seconds in-flight requests may finish before they "
                                "are cancelled.")


class MonitorConfig(_Section):
    """Drift signals and the thresholds that make `tuneloop monitor` exit 1."""

    window: str = Field("7d", description="Traffic window, e.g. 24h, 7d.")
    min_requests: int = Field(30, ge=1, description="Fewer requests in the window: no verdict.")
    mmd_p_value: float = Field(0.01, gt=0, lt=1, description="Embedding MMD drift when p below this.")
    domain_auc_margin: float = Field(
        0.1, ge=0, le=0.5,
        description="Drift when the domain-classifier AUC exceeds the random baseline by this.")
    novel_term_rate: float = Field(0.3, ge=0, le=1,
                                   description="Drift when the novel-term rate exceeds this.")
    quality_drop: float = Field(0.1, ge=0, le=1, description="Drift when feedback quality falls by this.")


class RetrainConfig(_Section):
    """Incremental re-training and the champion/challenger gate."""

    replay_fraction: float = Field(
        0.5, ge=0, description="Replay sample of the original training data, as a share of new data.")
    fresh: str | None = Field(None, description="Fresh labelled data file to add (optional).")
    frozen_eval: str | None = Field(None, description="Frozen eval set; default: data.test.")
    margin: float = Field(0.0, ge=0, description="Challenger must beat champion by this on the fresh slice.")
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of the paired tests.")


class AuditConfig(_Section):
    """`tuneloop data audit | fix | split` thresholds: the one place they are set.

    The defaults suit 100-10,000 short records; the command-line flags of the same names
    override them for one run.
    """

    near_threshold: float = Field(0.7, ge=0.0, le=1.0,
                                  description="Word 5-gram Jaccard at which two inputs are near duplicates.")
    semantic_threshold: float = Field(
        0.95, ge=0.0, le=1.0, description="MiniLM cosine at which two inputs are paraphrase duplicates.")
    semantic_min_cosine: float = Field(
        0.8, ge=0.0, le=1.0,
        description="Semantic duplicates: besides cosine >= semantic_threshold alone, a pair with "
                    "at least this cosine whose words also overlap.")
    semantic_word_overlap: float = Field(
        0.7, ge=0.0, le=1.0,
        description="Word-set Jaccard that pair must share: a reworded copy keeps most of its "
                    "words, two users asking the same thing mostly do not.")
    leak_semantic_threshold: float = Field(
        0.75, ge=0.0, le=1.0,
        description="MiniLM cosine to the nearest eval record for a reworded leak (it must also "
                    "share leak_word_overlap of its words).")
    leak_word_overlap: float = Field(
        0.6, ge=0.0, le=1.0, description="Word-set Jaccard a reworded leak shares with that record.")
    min_per_class: int = Field(10, ge=1, description="Fewer training examples of a label is a finding.")
    num_perm: int = Field(128, ge=16, description="MinHash permutations for near-duplicate search.")


class Config(_Section):
    """A tuneloop project: one file, every stage."""

    data: DataConfig
    task: TaskConfig = Field(default_factory=TaskConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    seed: int = 0

    def resolve_paths(self, base: Path) -> Config:
        """Return a copy whose relative file paths are absolute, read against `base`."""
        c = self.model_copy(deep=True)
        for section, key in (("data", "train"), ("data", "validation"), ("data", "test"),
                             ("output", "dir"), ("registry", "dir"), ("retrain", "fresh"),
                             ("retrain", "frozen_eval"), ("method", "init_adapter"),
                             ("eval", "corpus")):
            obj = getattr(c, section)
            v = getattr(obj, key)
            if v is not None and not Path(v).expanduser().is_absolute():
                setattr(obj, key, str((base / v).resolve()))
        m = Path(c.model.name).expanduser()
        if not m.is_absolute() and (base / m).is_dir():
            c.model.name = str((base / m).resolve())
        return c

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def json_schema() -> str:
    return json.dumps(Config.model_json_schema(), indent=2)


def _apply_override(raw: dict[str, Any], assignment: str, source: str) -> None:
    if "=" not in assignment:
        raise TuneloopError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.learning_rate=1e-4")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise TuneloopError(f"--set {assignment!r}: {p!r} in {source} is not a section")
    node[parts[-1]] = yaml.safe_load(value) if value != "" else None


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        key = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            fix = "remove it or check its spelling (`tuneloop config schema` lists every key)"
        elif e["type"] == "missing":
            fix = "add it"
        else:
            fix = "change its value"
        lines.append(f"  {key}: {msg} (got {e.get('input')!r}); {fix}")
    return "\n".join(lines)


def parse_config(raw: dict[str, Any], source: str = "<config>", base: Path | None = None,
                 overrides: list[str] | None = None) -> Config:
    """Validate a raw mapping (plus KEY=VALUE overrides) into a Config with resolved paths."""
    raw = json.loads(json.dumps(raw))  # deep copy; overrides must not touch the caller's dict
    for o in overrides or []:
        _apply_override(raw, o, source)
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise TuneloopError(_format_errors(e, source)) from None
    return cfg.resolve_paths(base or Path.cwd())


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read tuneloop.yaml; every error names the file and the key."""
    path = Path(path)
    if path.is_dir():
        path = path / "tuneloop.yaml"
    if not path.exists():
        raise TuneloopError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise TuneloopError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise TuneloopError(f"{path}: expected a mapping of sections (data, task, model, ...)")
    return parse_config(raw, str(path), path.parent.resolve(), overrides)

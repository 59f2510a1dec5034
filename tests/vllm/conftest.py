"""Fixtures of the vLLM suite: the tiny models, one offline vLLM engine and one HF engine on them.

Runs with the vLLM virtualenv's python (`make test-vllm`), where the ttc package itself is not
installed (its Prefect pins clash with vLLM's): the repository root goes on sys.path, and only
modules whose imports exist there are used (`ttc_nodes`, `graphs`, `db`, `flows.service.solving`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# Set before vLLM is imported. The engine runs in this process (no engine-core and worker
# processes to spawn: a start costs ~25 s instead of ~60 s on two cores) and eagerly (no
# torch.compile warm-up); the KV cache gets 1 GiB; caches stay inside the ignored virtualenv.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CACHE_ROOT", str(ROOT / ".venv-vllm" / "cache"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from tests.model_fixtures import build_tokenizer, save_tiny_model  # noqa: E402
from ttc_nodes.engines import load_proposer  # noqa: E402

# The main suite's tiny models (`tiny_lm`, `tiny_prm`) as the same session fixtures.
pytest_plugins = ["tests.model_fixtures"]

# vLLM's CPU worker makes torch.set_num_threads a no-op once it has started, so set it first.
torch.set_num_threads(1)

# float32 on both engines, so greedy decoding picks the same tokens; block_size=32 (the smallest
# the CPU attention kernel takes) lets the short test prompts fill whole, cacheable blocks.
VLLM_OPTIONS = "dtype=float32&max_model_len=512&enforce_eager=1&block_size=32"


# What the answering model writes after each token: a first step "1+2", then "\\boxed{3}" and the end.
ANSWER_CHAIN = {
    "[UNK]": "1",
    "1": "+",
    "+": "2",
    "2": "\n\n",
    "\n\n": "\\boxed{",
    "\\boxed{": "3",
    "3": "}",
    "}": "[EOS]",
}


def save_answering_model(directory: Path) -> Path:
    """The tiny Llama rewired into a bigram model that answers "What is 1+2?" in two steps.

    Random weights decode greedily into blank lines and never box an answer, so a strategy's answer
    would be None through any engine. Here each token's embedding is a unit vector that dwarfs what
    the (still random) layers add, and the output head maps it to the next token of ANSWER_CHAIN.
    """
    from safetensors.torch import load_file, save_file

    save_tiny_model(directory, classifier=False)
    ids = build_tokenizer().convert_tokens_to_ids
    weights = load_file(directory / "model.safetensors")
    embeddings = torch.randn(weights["model.embed_tokens.weight"].shape, generator=torch.Generator().manual_seed(0))
    embeddings /= embeddings.norm(dim=1, keepdim=True)
    head = torch.zeros_like(weights["lm_head.weight"])
    for token, following in ANSWER_CHAIN.items():
        head[ids(following)] += embeddings[ids(token)]
    weights.update({"model.embed_tokens.weight": embeddings * 8, "lm_head.weight": head})
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


@pytest.fixture(scope="session")
def answering_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_answering_model(tmp_path_factory.mktemp("answering-lm"))


@pytest.fixture(scope="session")
def vllm_uri(tiny_lm: Path) -> str:
    return f"vllm:{tiny_lm}?{VLLM_OPTIONS}"


@pytest.fixture(scope="session")
def vllm_engine(vllm_uri: str):  # type: ignore[no-untyped-def]
    """One offline engine for the session: loaded through its URI, as the flows load it."""
    return load_proposer(vllm_uri)


@pytest.fixture(scope="session")
def hf_engine(tiny_lm: Path):  # type: ignore[no-untyped-def]
    return load_proposer(f"hf:{tiny_lm}?device=cpu&dtype=float32")

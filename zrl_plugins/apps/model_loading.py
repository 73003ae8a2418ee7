"""How recipes load the policy: TRL's ``ModelConfig`` flags (dtype, attention, LoRA, 4/8-bit, remote code) turned
into the trainer's ``model_init_kwargs``, ``peft_config`` and ``quantization_config``, as TRL's own ``grpo.py`` does.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from trl import ModelConfig

from ..framework.errors import ConfigError

DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass
class RecipeModelConfig(ModelConfig):
    """TRL's ``ModelConfig`` with the recipes' defaults (the embedded model, ``dtype: auto``)."""

    model_name_or_path: str | None = field(
        default="smollm2",
        metadata={
            "help": "Local path or hub id; `smollm2` = the embedded SmolLM2-135M-Instruct; `tiny` / `medium` = "
            "random Llamas built offline (smoke tests, engine checks)."
        },
    )
    dtype: str | None = field(
        default="auto",
        metadata={
            "help": "Weights dtype. `auto`: bfloat16 on a bf16 GPU when the engine keeps fp32 master weights "
            "(DeepSpeed, FSDP2 with mixed precision), else float32 (`--bf16` still computes in bf16 under "
            "autocast); or bfloat16 / float16 / float32."
        },
    )


def keeps_fp32_master_weights(config: Any) -> bool:
    """Whether the engine this run will use keeps fp32 master weights for low-precision model weights: DeepSpeed
    (its bf16/fp16 modes), and FSDP2 under mixed precision (accelerate upcasts trainable parameters to fp32). Plain
    DDP and single-device runs update the weights in their own dtype."""
    if getattr(config, "deepspeed_plugin", None) is not None or os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
        return True
    fsdp = bool(getattr(config, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    mixed = bool(config.bf16 or config.fp16) or os.environ.get("ACCELERATE_MIXED_PRECISION", "no") != "no"
    return fsdp and mixed


def resolve_dtype(name: str | None, config: Any) -> str:
    """The weights dtype of ``--dtype``. ``auto`` → ``bfloat16`` on a bf16-capable GPU when the engine keeps fp32
    master weights (DeepSpeed, FSDP2 with mixed precision), else ``float32`` (with ``--bf16``, compute still runs in
    bf16 under autocast). Without master weights, Adam updates smaller than bf16's resolution (~0.4 % of a weight,
    far above a typical lr of 1e-6) would round away and the model would silently not learn."""
    name = name or "auto"
    if name not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {name!r}")
    if name != "auto":
        return name
    gpu_bf16 = not config.use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return "bfloat16" if gpu_bf16 and keeps_fp32_master_weights(config) else "float32"


def model_init_kwargs(model_args: ModelConfig, config: Any) -> dict[str, Any]:
    """The ``model_init_kwargs`` TRL loads the policy (and its reference model) with; explicit
    ``config.model_init_kwargs`` entries win over the flags."""
    kwargs: dict[str, Any] = {
        "revision": model_args.model_revision,
        "dtype": resolve_dtype(model_args.dtype, config),
        "attn_implementation": model_args.attn_implementation,
        "trust_remote_code": bool(getattr(config, "trust_remote_code", False)),
    }
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    kwargs.update(config.model_init_kwargs or {})
    low = kwargs.get("dtype") in ("bfloat16", "float16")
    if low and not (model_args.use_peft or keeps_fp32_master_weights(config)):
        warnings.warn(
            f"dtype={kwargs['dtype']} without fp32 master weights (plain DDP / one device): optimizer updates smaller "
            "than the dtype's resolution are lost. Use DeepSpeed or FSDP2 with --bf16, or --dtype float32 --bf16.",
            stacklevel=2,
        )
    return kwargs


def check_model_flags(model_args: ModelConfig, config: Any) -> None:
    """Refuse flag combinations that cannot train, before anything is loaded, naming one that works."""
    quantized = model_args.load_in_4bit or model_args.load_in_8bit
    if quantized and not model_args.use_peft:
        raise ConfigError(
            "--load_in_4bit / --load_in_8bit train LoRA adapters on a frozen quantized model: add --use_peft "
            "(e.g. --use_peft --lora_r 16 --load_in_4bit)."
        )
    if quantized and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            "--load_in_4bit / --load_in_8bit need bitsandbytes (pip install bitsandbytes, on a CUDA machine); or "
            "drop the flag and train LoRA on the full-precision model (--use_peft --dtype bfloat16)."
        )
    if quantized and config.use_cpu:
        raise ConfigError("4/8-bit loading needs a GPU; on CPU use --use_peft without --load_in_4bit/8bit.")
    flash = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}
    if model_args.attn_implementation in flash:
        if config.use_cpu or not torch.cuda.is_available():
            raise ConfigError(
                f"--attn_implementation {model_args.attn_implementation} needs a CUDA GPU; here use "
                "--attn_implementation sdpa."
            )
        if importlib.util.find_spec(flash[model_args.attn_implementation]) is None:
            raise ConfigError(
                f"--attn_implementation {model_args.attn_implementation} needs the "
                f"{flash[model_args.attn_implementation]} package (pip install flash-attn); without it use "
                "--attn_implementation sdpa."
            )


def peft_and_quantization(model_args: ModelConfig) -> dict[str, Any]:
    """``peft_config`` / ``quantization_config`` trainer keyword arguments from the LoRA and 4/8-bit flags."""
    from trl import get_peft_config, get_quantization_config

    kwargs: dict[str, Any] = {}
    peft_config = get_peft_config(model_args)
    if peft_config is not None:
        kwargs["peft_config"] = peft_config
    if model_args.load_in_4bit or model_args.load_in_8bit:
        compute = model_args.dtype if model_args.dtype not in (None, "auto") else "bfloat16"  # 4-bit compute dtype
        kwargs["quantization_config"] = get_quantization_config(dataclasses.replace(model_args, dtype=compute))
    return kwargs


def _numel(param: torch.Tensor) -> int:
    return int(getattr(param, "ds_numel", 0) or param.numel())  # ZeRO-3 partitions report their full size here


def parameter_counts(model: torch.nn.Module, exclude: Any = None) -> dict[str, int]:
    """Trainable and total parameters of ``model`` (full sizes, also when ZeRO-3 or FSDP2 shard them); names for
    which ``exclude(name)`` is true are left out (e.g. a PPO critic attached to the policy)."""
    trainable = total = 0
    for name, param in model.named_parameters():
        if exclude is not None and exclude(name):
            continue
        total += _numel(param)
        trainable += _numel(param) if param.requires_grad else 0
    return {"trainable_parameters": trainable, "total_parameters": total}

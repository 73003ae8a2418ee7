"""The PPO critic and how it lives inside the policy's training engine.

The value model is attached to the policy as a child module (``zrl_critic``: a token-classification model, or
``zrl_value_head``: a linear head on the policy's own decoder), so whatever engine the Trainer prepares — DDP,
DeepSpeed ZeRO-2/3, FSDP2 — wraps, shards, gathers, reduces, optimizes and checkpoints policy and critic together,
with one optimizer holding separate parameter groups. This is the single-module design of TRL's former
``PolicyAndValueWrapper``, with the policy kept as the root so that TRL's generation, PEFT and vLLM code still see the
policy itself; OpenRLHF and verl instead run the critic as a second engine.

The policy's own ``state_dict`` then also holds the critic's keys: :func:`split_state_dict` separates them wherever
weights are written, so a saved policy stays a plain causal LM and the critic is saved beside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForTokenClassification, PreTrainedModel

CRITIC_ATTR = "zrl_critic"  # separate mode: a whole value model
VALUE_HEAD_ATTR = "zrl_value_head"  # shared mode: a head on the policy's decoder
CRITIC_KEYS = (CRITIC_ATTR, VALUE_HEAD_ATTR)
OUTPUT_KEY = "zrl_values"  # where values_in_forward puts V(s) in the policy's forward output


def _zero_(*tensors: torch.Tensor | None) -> None:
    """Zero tensors, also when DeepSpeed ZeRO-3 has partitioned them at construction (``zero3_init_flag``)."""
    present = [t for t in tensors if t is not None]
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        import deepspeed

        with deepspeed.zero.GatheredParameters(present, modifier_rank=0), torch.no_grad():
            for tensor in present:
                tensor.zero_()
        return
    with torch.no_grad():
        for tensor in present:
            tensor.zero_()


def load_critic(name_or_path: str, dtype: torch.dtype | None = None, **kwargs: Any) -> PreTrainedModel:
    """A value model from a policy, reward-model or critic checkpoint.

    ``AutoModelForTokenClassification`` with one label puts a linear ``score`` head on the backbone's last hidden
    state. A sequence-classification reward model stores its head under the same name, so its weights are reused
    (PPO-max initialises the critic from the reward model); a causal LM gets a new head initialised to zero, so
    the first values are 0 rather than noise. Dropout on the head is off: values are regression targets.
    """
    config = AutoConfig.from_pretrained(name_or_path, num_labels=1, **kwargs)
    config.classifier_dropout = 0.0
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report would list the new head as MISSING: it is, by design (below)
    try:
        critic, info = AutoModelForTokenClassification.from_pretrained(
            name_or_path, config=config, dtype=dtype, output_loading_info=True, **kwargs
        )
    finally:
        hf_logging.set_verbosity(level)
    if any(key.startswith("score.") for key in info["missing_keys"]):
        _zero_(critic.score.weight, critic.score.bias)
    critic.config.use_cache = False
    return critic


class ValueHead(nn.Linear):
    """``critic_mode="shared"``: V(s_t) = w·h_t + b on the policy decoder's last hidden state, zero-initialised.

    Its own class so that FSDP2 can shard it as a unit of its own (see :func:`attach_value_model`)."""

    def __init__(self, hidden_size: int, dtype: torch.dtype | None = None):
        super().__init__(hidden_size, 1, dtype=dtype)
        _zero_(self.weight, self.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden_states.to(self.weight.dtype))[..., 0]


def attach_value_model(policy: nn.Module, value_model: nn.Module) -> None:
    """Make ``value_model`` (a token-classification critic or a :class:`ValueHead`) a child of ``policy``.

    FSDP2 (accelerate's transformer auto-wrap) shards each module whose class is listed in the model's
    ``_no_split_modules``; the critic is called on its own, outside the policy's forward, so it and its decoder
    layers must be FSDP units of their own rather than leftovers of the policy's root unit.
    """
    name = VALUE_HEAD_ATTR if isinstance(value_model, ValueHead) else CRITIC_ATTR
    policy.add_module(name, value_model)
    classes = [type(value_model).__name__, *(getattr(value_model, "_no_split_modules", None) or [])]
    own = list(getattr(policy, "_no_split_modules", None) or [])
    policy._no_split_modules = own + [c for c in classes if c not in own]


def value_model_of(policy: nn.Module) -> nn.Module | None:
    """The critic or value head attached to ``policy`` (through a PEFT wrapper too), or ``None``."""
    for attr in CRITIC_KEYS:
        module = policy._modules.get(attr)
        if module is not None:
            return module
    return None


def is_critic_key(name: str) -> bool:
    """Whether a parameter / state-dict name (possibly prefixed by a DDP or PEFT wrapper) belongs to the critic."""
    return any(part in CRITIC_KEYS for part in name.split("."))


def split_state_dict(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(policy entries, critic entries with the attachment prefix removed) of a policy's state dict."""
    policy, critic = {}, {}
    for key, value in state_dict.items():
        if not is_critic_key(key):
            policy[key] = value
            continue
        parts = key.split(".")
        index = next(i for i, part in enumerate(parts) if part in CRITIC_KEYS)
        critic[".".join(parts[index + 1 :])] = value
    return policy, critic


def without_critic(named_tensors: Callable[[], Iterable[tuple[str, Any]]]) -> Callable[[], Iterator[tuple[str, Any]]]:
    """Wrap a ``() -> iterable of (name, tensor)`` so it skips the critic's entries (every entry is still drawn from
    the source, so per-tensor gathers of sharded engines still run on every process)."""

    def policy_only() -> Iterator[tuple[str, Any]]:
        for name, tensor in named_tensors():
            if not is_critic_key(name):
                yield name, tensor

    return policy_only


@contextlib.contextmanager
def detached_value_model(policy: nn.Module) -> Iterator[nn.Module | None]:
    """Temporarily remove the attached critic from ``policy`` (e.g. to load a policy-only checkpoint into it)."""
    attr = next((a for a in CRITIC_KEYS if policy._modules.get(a) is not None), None)
    module = policy._modules.pop(attr) if attr else None
    try:
        yield module
    finally:
        if attr:
            policy._modules[attr] = module


def decoder_of(policy: nn.Module) -> nn.Module:
    """The decoder stack (the module whose output is the last hidden state) of a causal LM, through PEFT."""
    get_decoder = getattr(policy, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    if decoder is None:
        raise ValueError(f"critic_mode='shared' needs a decoder (`get_decoder()`) on {type(policy).__name__}")
    return decoder


@functools.cache
def _with_values_field(output_class: type) -> type:
    """``output_class`` (a transformers ``ModelOutput`` dataclass) with one more optional field for the values:
    wrappers that rebuild outputs as ``type(output)(**output)`` then keep them."""
    return dataclasses.make_dataclass(
        f"{output_class.__name__}WithValues", [(OUTPUT_KEY, torch.Tensor | None, None)], bases=(output_class,)
    )


@contextlib.contextmanager
def values_in_forward(policy: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside the block, every forward of ``policy`` also computes the attached value model's V(s) at every position
    (B x L), collected in call order into the yielded list.

    The values are computed in forward hooks of the policy itself, so they run *inside* the policy's forward: a DDP
    wrapper then sees the critic's parameters used within its forward (it refuses parameters used outside it), and
    ZeRO-3 / FSDP2 gather the critic in the same pass. A shared head reads the decoder's last hidden state of that
    very pass; a separate critic runs on the same ``input_ids`` / ``attention_mask``.
    """
    value_model = value_model_of(policy)
    if value_model is None:
        raise ValueError(f"no critic is attached to {type(policy).__name__}")
    values: list[torch.Tensor] = []
    hidden: list[torch.Tensor] = []
    handles = []

    def keep_hidden(module: nn.Module, args: Any, output: Any) -> None:
        hidden.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    def add_values(module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
        if isinstance(value_model, ValueHead):
            values.append(value_model(hidden.pop()))
        else:
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            values.append(
                critic_values(value_model, input_ids, kwargs.get("attention_mask"), kwargs.get("position_ids"))
            )
        # Part of the output too: DDP with find_unused_parameters (the Trainer's default) marks every parameter it
        # cannot reach from the forward's outputs as unused, and would then see the critic's gradients twice.
        return _with_values_field(type(output))(**output, **{OUTPUT_KEY: values[-1]})

    if isinstance(value_model, ValueHead):
        handles.append(decoder_of(policy).register_forward_hook(keep_hidden))
    handles.append(policy.register_forward_hook(add_values, with_kwargs=True))
    try:
        yield values
    finally:
        for handle in handles:
            handle.remove()


def critic_values(
    value_model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """V(s) at every position of a separate critic (B x L; packed rows when given ``position_ids`` and no mask)."""
    kwargs = {} if position_ids is None else {"position_ids": position_ids}
    return value_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).logits[..., 0]


def completion_slice(values: torch.Tensor, completion_length: int) -> torch.Tensor:
    """V(s_t) for each completion token t: the value at the position *before* token t (B x T, float32), aligned
    with the per-token log-probs of the same completion tokens."""
    return values[:, -completion_length - 1 : -1].float()


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ½·max((V − R)², (clip(V, V_old ± c) − R)²) (docs/methods.md, PPO), and where the clipped term won
    (a bool tensor, all False without clipping)."""
    unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    clipped = (old_values + (values - old_values).clamp(-clip, clip) - returns) ** 2
    return 0.5 * torch.max(unclipped, clipped), clipped > unclipped

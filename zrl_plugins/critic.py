"""The PPO critic: a causal-LM backbone with a one-output token-classification head (V(s_t) per position)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForTokenClassification, PreTrainedModel
from transformers.modeling_outputs import TokenClassifierOutput


def load_critic(name_or_path: str, dtype: torch.dtype | None = None, **kwargs: Any) -> PreTrainedModel:
    """A value model from a policy, reward-model or critic checkpoint.

    ``AutoModelForTokenClassification`` with one label puts a linear ``score`` head on the backbone's last hidden
    state. A sequence-classification reward model stores its head under the same name, so its weights are reused
    (PPO-max initialises the critic from the reward model); a causal LM gets a new head initialised to zero, so
    the first values are 0 rather than noise. Dropout on the head is off: values are regression targets.
    """
    config = AutoConfig.from_pretrained(name_or_path, num_labels=1)
    config.classifier_dropout = 0.0
    critic, info = AutoModelForTokenClassification.from_pretrained(
        name_or_path, config=config, dtype=dtype, output_loading_info=True, **kwargs
    )
    if any(key.startswith("score.") for key in info["missing_keys"]):
        torch.nn.init.zeros_(critic.score.weight)
        if critic.score.bias is not None:
            torch.nn.init.zeros_(critic.score.bias)
    critic.config.use_cache = False
    return critic


class SharedBackboneCritic(torch.nn.Module):
    """A value head on the policy's own decoder: ``critic.parameters()`` is the head only (the backbone's parameters
    stay the actor's), and the value loss reaches the backbone through the shared hidden states."""

    def __init__(self, policy: torch.nn.Module, hidden_size: int):
        super().__init__()
        object.__setattr__(self, "policy", policy)  # deliberately not a submodule: its parameters are the actor's
        self.score = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.score.weight)
        torch.nn.init.zeros_(self.score.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, use_cache: bool = False) -> Any:
        hidden = self.policy.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return TokenClassifierOutput(logits=self.score(hidden.last_hidden_state.to(self.score.weight.dtype)))


def completion_values(
    critic: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_length: int
) -> torch.Tensor:
    """V(s_t) for each completion token t: the head's output at the position *before* token t (B x T, float32),
    aligned with the per-token log-probs of the same completion tokens."""
    logits = critic(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[..., 0]
    return logits[:, -completion_length - 1 : -1].float()


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ½·max((V − R)², (clip(V, V_old ± c) − R)²) (SPEC §4), and where the clipped term won (a bool
    tensor, all False without clipping)."""
    unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    clipped = (old_values + (values - old_values).clamp(-clip, clip) - returns) ** 2
    return 0.5 * torch.max(unclipped, clipped), clipped > unclipped

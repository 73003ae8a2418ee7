"""A complete minimal zrl plugin: a verifier and a normalizer, registered through hooks."""

import torch

from zrl_plugins.sdk import LossContext, group_view, hookimpl, sequence_mean_aggregate


class ShortAnswer:
    """1.0 when the completion has at most ``max_words`` words, else 0.0 (a TRL reward function)."""

    def __init__(self, max_words: int = 5):
        self.max_words = max_words

    def __call__(self, prompts, completions, **columns):
        return [float(len(str(c).split()) <= self.max_words) for c in completions]


class MeanBaseline:
    """A_i = r_i − mean of its group (no std scaling); GRPO's sequence-mean aggregation."""

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        grouped = group_view(rewards, group_size, "mean_baseline")
        centred = grouped - torch.nanmean(grouped, dim=1, keepdim=True)
        return torch.nan_to_num(centred, nan=0.0).view(-1)

    def aggregate(self, per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        return sequence_mean_aggregate(per_token_loss, mask, ctx)


@hookimpl
def zrl_register_verifiers(register):
    register("short_answer", ShortAnswer)


@hookimpl
def zrl_register_normalizers(register):
    register("mean_baseline", MeanBaseline)

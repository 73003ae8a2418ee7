"""``ZRLGRPOTrainer``: TRL's ``GRPOTrainer`` whose rewards, advantages, loss aggregation, KL and rollouts come from
plugins selected by name in :class:`~zrl_plugins.ZRLConfig`.

Everything else — data sampling, generation (transformers or TRL's vLLM modes), tool loops, PEFT, reference-model
handling, gradient accumulation, multi-process gathering, logging, checkpoints — is TRL's, unchanged.

TRL methods overridden, and why:

``__init__``
    Builds the selected components through the plugin manager, turns verifiers into TRL reward functions, installs a
    rollout strategy that replaces generation as TRL's ``rollout_func``, and sets ``args.beta`` so that TRL loads a
    reference model exactly when the KL penalty needs one (``kl_penalty="none"`` → none is loaded).
``_calculate_rewards``
    Calls TRL's (reward functions, multi-process gathering) and hands the gathered reward matrix and the truncation
    flags back as a value (:class:`~zrl_plugins.framework.scored_batch.ScoredBatch`), not as trainer attributes.
``_generate_and_score_completions``
    A straight pipeline over a ``ScoredBatch``: score (TRL's generation and rewards) → group filter (a rollout that
    implements :class:`~zrl_plugins.framework.protocols.GroupFilter`, e.g. DAPO's dynamic sampling, given a
    ``score_more`` callable) → reward shaping (truncation rule, ``normalize_then_sum``, KL placed in the reward) →
    the normalizer's advantages on the global batch, sliced to this process as TRL does → π_old log-probs for
    off-policy rollouts → ``zrl_on_rollout_batch`` observers.
``_compute_loss``
    TRL aggregates the per-token loss with a fixed ``if loss_type == ...`` chain and hard-codes the k3 estimator, so
    the loss is composed here from parts: the forward (TRL's ``_get_per_token_logps_and_entropies``), the
    ``policy_loss`` component's per-token loss (token or sequence importance level), TRL's masks (off-policy mask,
    entropy mask, vLLM importance correction), the KL penalty's term, the bonus terms (entropy bonus, static or
    adaptive, router aux loss), and the normalizer's aggregation. A non-finite loss is left to the step guard
    (:mod:`zrl_plugins.trainers.numerics`), not blamed on a plugin. The metrics logged are TRL's, plus ``kl_coef``.
``create_scheduler`` / ``_get_grad_norm``
    Install the non-finite step guard: a step whose loss or gradient norm is not finite is skipped on every process.
``log`` (through :class:`_ObservedLog`, placed after ``GRPOTrainer`` in the MRO)
    Lets ``zrl_on_log`` observers see and extend the metrics dict after TRL has merged its own metrics into it.
``_save_checkpoint`` / ``_load_optimizer_and_scheduler``
    Write and restore component state (KL controller, any ``state_dict()`` of a component) and the
    ``zrl_on_save_checkpoint`` / ``zrl_on_load_checkpoint`` plugin state, next to TRL's own files.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from accelerate.utils import gather
from transformers import Trainer
from trl import GRPOTrainer
from trl.trainer.utils import nanmax, nanmin

from ..framework.errors import ComponentContractError, ConfigError, DataError
from ..framework.ops import nanstd
from ..framework.plugins import ZRLPluginManager, get_plugin_manager
from ..framework.protocols import (
    GroupFilter,
    ImportanceWeighting,
    LossContext,
    NeedsColumns,
    PolicyLossOutput,
    Stateful,
    ValidatesSetup,
)
from ..framework.scored_batch import RefillContext, ScoredBatch, capturing_scores, report_scores
from ..framework.verifier_guard import NamedVerifier
from .batch import loss_mask, mode_of, sequences
from .components import Components, build_components, call_plugin, normalizer
from .config import ZRLConfig
from .controllers import ControllerAttributes, EntropyControl, KLControl, StepControllers
from .fused_head import completion_positions_only
from .numerics import NumericalInstabilityError, SkipGuard

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompletionForward:
    """What one training forward pass yields for the completion tokens (B x T each; ``aux_loss`` a scalar)."""

    logps: torch.Tensor
    entropies: torch.Tensor | None
    aux_loss: torch.Tensor | None = None
    values: torch.Tensor | None = None  # V(s_t) of a PPO critic computed in the same pass


STATE_FILE = "zrl_state_{rank}.pt"


class _ObservedLog(Trainer):
    """Sits between ``GRPOTrainer`` and ``Trainer`` in the MRO so observers see TRL's merged metrics."""

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self._observe_log(logs)
        super().log(logs, start_time)

    def _observe_log(self, logs: dict[str, float]) -> None:  # overridden below
        pass


def _guarded_scheduler_class(base: type, guard: SkipGuard) -> type:
    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        if guard.skip_scheduler:
            guard.skip_scheduler = False
            return None
        return base.step(self, *args, **kwargs)

    return type(f"Guarded{base.__name__}", (base,), {"step": step, "_zrl_guard": guard})


class ZRLGRPOTrainer(ControllerAttributes, GRPOTrainer, _ObservedLog):
    """GRPO-family trainer whose ingredients are plugins. Same constructor as ``trl.GRPOTrainer``.

    Args:
        model, reward_funcs, args, ...: as ``trl.GRPOTrainer``. ``reward_funcs`` may be omitted when
            ``args.verifiers`` names at least one verifier; both may be combined (verifiers first).
        plugin_manager: the plugin manager to take components from (default: the process-wide one, with every
            installed ``zrl`` entry point loaded).
    """

    _tag_names: ClassVar[list[str]] = ["trl", "grpo", "zrl"]
    _name = "ZRL-GRPO"

    def __init__(
        self,
        model: Any,
        reward_funcs: Any = None,
        args: ZRLConfig | None = None,
        *pargs: Any,
        plugin_manager: ZRLPluginManager | None = None,
        **kwargs: Any,
    ):
        if args is None:
            args = ZRLConfig(output_dir="zrl-output")
        if not isinstance(args, ZRLConfig):
            raise TypeError(
                f"ZRLGRPOTrainer needs a ZRLConfig (got {type(args).__name__}); ZRLConfig extends GRPOConfig"
            )
        self.zrl_pm = plugin_manager or get_plugin_manager()
        if args.max_completion_length is None or args.max_completion_length < 1:
            raise ConfigError(f"max_completion_length must be at least 1, got {args.max_completion_length}")
        self.components = self._build_components(args)
        setattr(self, self.components.advantages.kind, self.components.advantages.component)  # .normalizer (GRPO)
        self.policy_loss = self.components.policy_loss.component
        self.kl_penalty = self.components.kl_penalty.component
        self.rollout_strategy = self.components.rollout.component

        if reward_funcs is None:
            reward_funcs = []
        elif not isinstance(reward_funcs, list):
            reward_funcs = [reward_funcs]
        reward_funcs = [*self.components.verifiers, *reward_funcs]
        if not reward_funcs and kwargs.get("environment_factory") is None:
            raise ValueError(
                "no reward: select verifiers by name (ZRLConfig(verifiers=[...]), `--verifiers` on the CLI; installed: "
                f"{', '.join(self.zrl_pm.names('verifier'))}) or pass reward_funcs to the trainer."
            )

        if self.rollout_strategy.replaces_generation:
            if kwargs.get("rollout_func") is not None:
                raise ValueError(
                    f"rollout strategy {args.rollout!r} replaces generation, and a rollout_func was passed as well; "
                    "use one of the two."
                )
            kwargs["rollout_func"] = self.rollout_strategy

        self.entropy_control = EntropyControl.from_config(args)  # before TRL's __init__, which sets entropy_coef
        self._nonfinite = SkipGuard(args.nonfinite_policy, args.max_consecutive_skips)
        # TRL loads (and calls) a reference model iff beta != 0: on a copy of the config, that follows the KL penalty
        trl_args = copy.copy(args)
        trl_args.beta = float(self.kl_penalty.controller.beta) if self.kl_penalty.requires_reference else 0.0
        super().__init__(model, reward_funcs, trl_args, *pargs, **kwargs)
        samples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        self.kl_control = KLControl(self.kl_penalty, samples_per_step * self.accelerator.num_processes)
        self.add_callback(StepControllers(self._step_controllers))
        if isinstance(self.rollout_strategy, ValidatesSetup):
            self.rollout_strategy.validate(self)  # e.g. a strategy that cannot work with TRL's vLLM modes refuses
        if self.train_dataset is not None:
            self._check_training_data(self.train_dataset)

    # ------------------------------------------------------------------------------------------------ construction
    def _build_components(self, args: ZRLConfig) -> Components:
        """The GRPO family: advantages from a normalizer, the KL penalty's β from the config."""
        return build_components(self.zrl_pm, args, normalizer, {"beta": args.beta})

    def _check_training_data(self, dataset: Any, sample: int = 256) -> None:
        """Fail before any generation on data that cannot be trained on."""
        if not hasattr(dataset, "__len__"):
            return  # a streaming data set: nothing to check without consuming it
        if len(dataset) == 0:
            raise DataError("train_dataset is empty: nothing to train on.")
        columns = set(dataset.column_names or [])
        for func, name in zip(self.reward_funcs, self.reward_func_names, strict=True):
            verifier = func.verifier if isinstance(func, NamedVerifier) else func
            needed = verifier.required_columns if isinstance(verifier, NeedsColumns) else ()
            missing = [c for c in needed if c not in columns]
            if missing:
                raise DataError(
                    f"verifier {name!r} needs the data set column(s) {missing}, which train_dataset lacks; its "
                    f"columns are {sorted(columns)}. Rename the column or set the verifier's gold_column."
                )
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context is None or "prompt" not in columns or self.environment_factories is not None:
            return  # with environments, each prompt is rendered with its environment's tools only at batch time
        rows = min(len(dataset), sample)
        prompt_ids, _, _ = self._tokenize_prompts([dataset[i]["prompt"] for i in range(rows)])
        longest = max(range(rows), key=lambda i: len(prompt_ids[i]))
        if len(prompt_ids[longest]) + self.max_completion_length > context:
            raise DataError(
                f"row {longest} of train_dataset has a prompt of {len(prompt_ids[longest])} tokens; with "
                f"max_completion_length={self.max_completion_length} that exceeds the model's context of {context} "
                "tokens. Shorten or filter the prompts, or lower max_completion_length."
            )

    # ------------------------------------------------------------------------------------------------ rollout pipeline
    def _generate_and_score_completions(self, inputs):
        """score → group filter → reward shaping → advantages → observers, over one :class:`ScoredBatch` value."""
        batch = self._score(inputs)
        if batch.mode == "train" and isinstance(self.rollout_strategy, GroupFilter):
            batch = self._filter_groups(batch)
        rewards_per_func = gather(batch.rewards_per_func)  # group statistics are taken over the global batch
        rewards = self._shaped_rewards(rewards_per_func, gather(batch.truncated), batch.group_size)
        mask = loss_mask(batch.output)
        rewards = self._assign_advantages(batch.output, rewards, mask, batch.mode, batch.group_size)
        if self.zrl_pm.has_observers("zrl_on_rollout_batch"):  # decoding text is not free: only when watched
            self._notify_rollout_batch(batch, rewards, rewards_per_func)
        return batch.output

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # TRL's own definition of truncation (as in its `completions/clipped_ratio`): no EOS (or pad) at the end
        eos_and_pad = {*self.eos_token_ids, self._tokenizer.pad_token_id}
        truncated = [not ids or ids[-1] not in eos_and_pad for ids in completion_ids_list]
        # verifiers receive the column; the caller's rows stay as they were (copies, not the rows, gain it)
        rows = [{**row, "completion_truncated": t} for row, t in zip(inputs, truncated, strict=True)]
        rewards_per_func = super()._calculate_rewards(rows, prompts, completions, completion_ids_list)
        report_scores(rewards_per_func, truncated)
        return rewards_per_func

    def _score(self, inputs: list[dict[str, Any]]) -> ScoredBatch:
        """TRL's generation and scoring of this process's rows, plus π_old log-probs and importance weights for
        off-policy strategies."""
        with capturing_scores() as scores:
            output = super()._generate_and_score_completions(inputs)
        mode = mode_of(self.model)
        mask = loss_mask(output)
        strategy = self.rollout_strategy
        if strategy.off_policy and "old_per_token_logps" not in output:
            output["old_per_token_logps"] = self._policy_logps(output)
        if strategy.off_policy and isinstance(strategy, ImportanceWeighting) and "sampling_per_token_logps" in output:
            old, behaviour = output["old_per_token_logps"], output["sampling_per_token_logps"]
            rollout = self.components.rollout
            weights, stats = call_plugin(self.zrl_pm, rollout, "importance_weights", old, behaviour, mask)
            output["importance_sampling_ratio"] = weights  # the loss multiplies per-token losses by it, as for vLLM
            self._log_rollout_stats(stats, mode)
        local = self._process_slice(output)
        device = scores.rewards_per_func.device
        truncated = torch.tensor(scores.truncated, dtype=torch.bool, device=device)
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        return ScoredBatch(inputs=list(inputs), output=output, rewards_per_func=scores.rewards_per_func[local],
                           truncated=truncated, mode=mode, group_size=group_size)  # fmt: skip

    def _filter_groups(self, batch: ScoredBatch) -> ScoredBatch:
        """Hand the batch to the rollout strategy's group filter (DAPO dynamic sampling), with the core's means to
        score more rows; then recount the loss tokens over all processes."""

        def any_process(flag: bool) -> bool:
            return bool(self.accelerator.reduce(torch.tensor([float(flag)], device=self.accelerator.device)) > 0)

        def group_rewards(scored: ScoredBatch) -> torch.Tensor:
            return self._shaped_rewards(scored.rewards_per_func, scored.truncated, scored.group_size).view(
                -1, scored.group_size
            )

        ctx = RefillContext(score_more=self._score, group_rewards=group_rewards, any_process=any_process,
                            dataset=self.train_dataset, process_index=self.accelerator.process_index)  # fmt: skip
        batch, stats = call_plugin(self.zrl_pm, self.components.rollout, "refill", batch, ctx)
        batch.output["num_items_in_batch"] = self.accelerator.gather(loss_mask(batch.output).sum()).sum()
        self._log_rollout_stats(stats, "train")
        return batch

    def _shaped_rewards(self, rewards_per_func: torch.Tensor, truncated: torch.Tensor, group_size: int) -> torch.Tensor:
        """One reward per completion from the reward functions, as TRL combines them: weighted sum
        (``sum_then_normalize``) or weighted sum of each function's group-normalized rewards (``normalize_then_sum``);
        NaN where every function said None; then Dr. GRPO's truncation rule (``truncated_reward``)."""
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        unscorable = torch.isnan(rewards_per_func).all(dim=1)
        if self.args.multi_objective_aggregation == "normalize_then_sum":
            grouped = rewards_per_func.view(-1, group_size, rewards_per_func.size(1))
            mean = torch.nanmean(grouped, dim=1, keepdim=True)
            std = nanstd(grouped, dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
            rewards_per_func = ((grouped - mean) / (std + 1e-4)).view(-1, rewards_per_func.size(1))
        rewards = (rewards_per_func * weights).nansum(dim=1)
        rewards[unscorable] = torch.nan
        if self.args.truncated_reward is not None:
            rewards[truncated] = self.args.truncated_reward
        return rewards

    def _process_slice(self, output: dict[str, Any]) -> slice:
        """This process's rows of a gathered (global) per-completion tensor."""
        rows = len(output["prompt_ids"])
        return slice(self.accelerator.process_index * rows, (self.accelerator.process_index + 1) * rows)

    def _reward_placed_kl(self, output: dict[str, Any], mask: torch.Tensor, mode: str) -> torch.Tensor:
        """β-free per-token KL of this process's rows (B x T, masked) for a KL penalty placed in the reward."""
        logps = output.get("old_per_token_logps")
        if logps is None:
            logps = self._policy_logps(output)
        per_token_kl = self.kl_penalty.per_token(logps, output["ref_per_token_logps"]) * mask
        self._metrics[mode]["kl"].append(self._global_masked_mean(per_token_kl, mask))
        if mode == "train":
            self.kl_control.observe(per_token_kl.sum(), mask.sum())
        return per_token_kl

    def _assign_advantages(
        self, output: dict[str, Any], rewards: torch.Tensor, mask: torch.Tensor, mode: str, group_size: int
    ) -> torch.Tensor:
        """Set ``output["advantages"]`` (this process's rows) from the global rewards; return the rewards used.

        GRPO family: a reward-placed KL is summed per sequence and subtracted before the normalizer runs on the
        global batch. The PPO trainer overrides this with per-token rewards and a critic.
        """
        if self.kl_penalty.placement == "reward" and self.kl_penalty.controller.beta != 0.0:
            sequence_kl = gather(self._reward_placed_kl(output, mask, mode).sum(-1))
            rewards = rewards - self.kl_penalty.controller.beta * sequence_kl

        if mode == "eval" and group_size < 2:  # a group of one has no relative advantage (TRL's are 0 too)
            advantages = torch.zeros_like(rewards)
        else:
            advantages = self._normalized_advantages(rewards, group_size)
        output["advantages"] = advantages[self._process_slice(output)]
        self._replace_logged_advantages(advantages)
        return rewards

    def _replace_logged_advantages(self, advantages: torch.Tensor) -> None:
        tail = self._logs["advantages"]  # keep TRL's completions table consistent with what is trained on
        for _ in range(min(len(advantages), len(tail))):
            tail.pop()
        tail.extend(advantages.tolist())

    def _global_masked_mean(self, x: torch.Tensor, mask: torch.Tensor) -> float:
        """Mean of ``x`` over the masked tokens of all processes (over rows when ``x`` is per sequence, B x 1)."""
        if x.shape[1] == 1:
            local_sum, local_count = x.sum(), torch.tensor(float(x.shape[0]), device=x.device)
        else:
            local_sum, local_count = (x * mask).sum(), mask.sum().float()
        totals = self.accelerator.reduce(torch.stack([local_sum, local_count]), reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    def _log_rollout_stats(self, stats: dict[str, float], mode: str) -> None:
        """Log a rollout strategy's statistics over all processes (min of ``*min*``, max of ``*max*``, else mean)."""
        names = sorted(stats)
        if not names:
            return
        gathered = self.accelerator.gather(torch.tensor([stats[k] for k in names], device=self.accelerator.device))
        gathered = gathered.view(-1, len(names))
        for i, name in enumerate(names):
            column = gathered[:, i]
            value = column.min() if "min" in name else column.max() if "max" in name else column.mean()
            self._metrics[mode][f"rollout/{name}"].append(value.item())

    def _notify_rollout_batch(self, batch: ScoredBatch, rewards: torch.Tensor, rewards_per_func: torch.Tensor) -> None:
        output = batch.output
        self.zrl_pm.call_observer(
            "zrl_on_rollout_batch",
            trainer=self,
            batch={
                "prompts": [x.get("prompt") for x in batch.inputs],
                "completions": self.processing_class.batch_decode(output["completion_ids"], skip_special_tokens=True),
                "rewards": rewards.detach(),
                "rewards_per_func": rewards_per_func.detach(),
                "reward_func_names": list(self.reward_func_names),
                "advantages": output["advantages"].detach(),
                "completion_ids": output["completion_ids"],
                "completion_mask": output["completion_mask"],
                "mode": batch.mode,
                "step": self.state.global_step,
            },
        )

    def _normalized_advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        name = self.components.advantages.name
        advantages = call_plugin(self.zrl_pm, self.components.advantages, "advantages", rewards, group_size)
        if not isinstance(advantages, torch.Tensor) or advantages.shape != rewards.shape:
            shape = tuple(advantages.shape) if isinstance(advantages, torch.Tensor) else type(advantages).__name__
            raise ComponentContractError(
                f"normalizer {name!r} returned advantages of shape {shape} for {rewards.numel()} rewards; expected "
                f"({rewards.numel()},), one per completion. No optimizer step was taken."
            )
        if not torch.isfinite(advantages).all():
            bad = (~torch.isfinite(advantages)).nonzero().flatten()[:8].tolist()
            raise ComponentContractError(
                f"normalizer {name!r} returned NaN or infinite advantages (rows {bad}, rewards there: "
                f"{rewards[bad].tolist()}); unscorable rows must get advantage 0. No optimizer step was taken."
            )
        return advantages

    def _policy_logps(self, output: dict[str, Any]) -> torch.Tensor:
        """Per-token log-probs of the completions under the current policy, without gradient."""
        input_ids, attention_mask = sequences(output)
        batch_size = (
            self.args.per_device_train_batch_size if self.model.training else self.args.per_device_eval_batch_size
        )
        with torch.no_grad():
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model, input_ids, attention_mask, output["completion_ids"].size(1), batch_size=batch_size
            )
        return logps

    # ------------------------------------------------------------------------------------------------ loss
    def _compute_loss(self, model, inputs):
        mode = mode_of(self.model)
        loss = self._policy_objective(self._forward_completions(model, inputs), inputs, mode)
        return self._checked_loss(loss, mode)

    def _checked_loss(self, loss: torch.Tensor, mode: str) -> torch.Tensor:
        """A non-finite training loss is a numerical fault of the step (see :mod:`zrl_plugins.trainers.numerics`):
        noted for the optimizer-step decision. DeepSpeed steps inside its backward, so there every process stops at
        once."""
        if mode != "train":
            return loss
        if self.is_deepspeed_enabled:
            faulty = torch.tensor(float(not torch.isfinite(loss)), device=self.accelerator.device)
            if self.accelerator.reduce(faulty, reduction="sum") > 0:
                raise NumericalInstabilityError(
                    f"step {self.state.global_step + 1}: the training loss is not finite on some process. DeepSpeed "
                    "steps inside its backward, so the step cannot be skipped and training stops. This is a "
                    "numerical fault of the run, not of a plugin: lower the learning rate, train in bf16 rather "
                    "than fp16, or check the data of that step."
                )
        elif not torch.isfinite(loss):
            self._nonfinite.note_fault(f"the training loss is {loss.item()}")
        return loss

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any):
        # On CPU, TRL's fused LM head projects every position; only the completion's are needed (fused_head.py)
        with completion_positions_only(self.accelerator.device):
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)

    def _forward_completions(self, model, inputs) -> CompletionForward:
        """One forward pass of ``model`` over the batch's prompts + completions: per-token log-probs and entropies of
        the completion tokens (TRL's fused LM head) and the MoE aux loss. The PPO trainer adds values here."""
        input_ids, attention_mask = sequences(inputs)
        multimodal = {
            key: inputs.get(key)
            for key in (
                "pixel_values",
                "image_grid_thw",
                "num_images",
                "pixel_attention_mask",
                "spatial_shapes",
                "num_tiles",
                "image_sizes",
                "token_type_ids",
                "mm_token_type_ids",
                "image_position_ids",
            )
        }
        logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            inputs["completion_ids"].size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **multimodal,
        )
        return CompletionForward(logps=logps, entropies=entropies, aux_loss=aux_loss)

    def _policy_objective(self, forward: CompletionForward, inputs: dict[str, Any], mode: str) -> torch.Tensor:
        """Policy loss (the component) → TRL's masks and importance correction → KL term → aggregation (the
        normalizer) → entropy bonus and router aux loss, in TRL's order."""
        mask = loss_mask(inputs)
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        old_logps = inputs.get("old_per_token_logps")
        if old_logps is None:
            old_logps = forward.logps.detach()
        sampling_ratio = inputs.get("importance_sampling_ratio")
        loss_args = (forward.logps, old_logps, advantages, mask, sampling_ratio)
        out = call_plugin(self.zrl_pm, self.components.policy_loss, "__call__", *loss_args)
        if not isinstance(out, PolicyLossOutput):
            raise ComponentContractError(
                f"policy_loss {self.args.policy_loss!r} must return a PolicyLossOutput, got {type(out).__name__}"
            )
        per_token_loss, entropy_mask = self._masked(out.per_token_loss, forward, inputs, advantages, mask, old_logps)
        if sampling_ratio is not None and not getattr(self.policy_loss, "uses_importance_sampling_ratio", False):
            per_token_loss = per_token_loss * sampling_ratio
        per_token_kl = self._kl_term(forward.logps, inputs, out.ratio)
        if per_token_kl is not None:
            per_token_loss = per_token_loss + self.kl_penalty.controller.beta * per_token_kl

        ctx = self._loss_context(inputs, mode)
        loss = self._aggregate(per_token_loss, mask, ctx)
        loss = loss + self._bonus_terms(loss.detach(), forward, mask, entropy_mask, ctx, mode)
        self._log_loss_metrics(mode, mask, forward.entropies, per_token_kl, out, advantages)
        return loss

    def _masked(self, per_token_loss, forward, inputs, advantages, mask, old_logps):
        """TRL's off-policy sequence mask (DeepSeek-V3.2) and high-entropy token mask; returns the masked loss and
        the entropy mask (or ``None``)."""
        if self.off_policy_mask_threshold is not None:
            per_token_loss = per_token_loss * self.get_off_policy_mask(
                advantages=advantages,
                per_token_logps=forward.logps,
                sampling_per_token_logps=inputs.get("sampling_per_token_logps", old_logps),
                mask=mask,
                off_policy_threshold=self.off_policy_mask_threshold,
            )
        entropy_mask = None
        if self.top_entropy_quantile < 1.0:
            entropy_mask = self.get_high_entropy_mask(forward.entropies, mask, 1 - self.top_entropy_quantile)
            per_token_loss = per_token_loss * entropy_mask
        return per_token_loss, entropy_mask

    def _kl_term(self, logps: torch.Tensor, inputs: dict[str, Any], ratio: torch.Tensor) -> torch.Tensor | None:
        """β-free per-token KL of a penalty placed in the loss (bias-corrected by the importance ratio when asked)."""
        if self.kl_penalty.placement != "loss" or self.beta == 0.0:
            return None
        per_token_kl = self.kl_penalty.per_token(logps, inputs["ref_per_token_logps"])
        return per_token_kl * ratio if self.args.use_bias_correction_kl else per_token_kl

    def _bonus_terms(self, policy_loss, forward, mask, entropy_mask, ctx: LossContext, mode: str) -> torch.Tensor:
        """TRL's entropy bonus (static, or adaptive with its controller) and MoE router aux loss, scaled only for
        gradient accumulation."""
        bonus = torch.zeros((), device=policy_loss.device)
        if self.entropy_control.enabled:
            effective_mask = mask if entropy_mask is None else mask * entropy_mask
            entropy = (forward.entropies * effective_mask).sum() / effective_mask.sum().clamp(min=1.0)
            bonus = bonus - self.entropy_control.applied_coef() * entropy / ctx.gradient_accumulation_steps
            self._metrics[mode]["policy_loss"].append(self.accelerator.gather(policy_loss).nanmean().item())
            if mode == "train":
                self.entropy_control.observe(forward.entropies, effective_mask)
        if self.aux_loss_enabled:
            bonus = bonus + self.router_aux_loss_coef * forward.aux_loss / ctx.gradient_accumulation_steps
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(forward.aux_loss).mean().item())
        return bonus

    def _loss_context(self, inputs: dict[str, Any], mode: str) -> LossContext:
        return LossContext(
            num_items_in_batch=float(inputs["num_items_in_batch"]),
            num_processes=self.accelerator.num_processes,
            gradient_accumulation_steps=self.current_gradient_accumulation_steps if mode == "train" else 1,
            steps_per_generation=self.args.steps_per_generation,
            max_completion_length=self.max_completion_length,
            training=mode == "train",
        )

    def _aggregate(self, per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        kind, name = self.components.advantages.kind, self.components.advantages.name
        loss = call_plugin(self.zrl_pm, self.components.advantages, "aggregate", per_token_loss, mask, ctx)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ComponentContractError(
                f"{kind} {name!r}.aggregate must return a scalar tensor, got "
                f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__}. "
                "No optimizer step was taken."
            )
        if not torch.isfinite(loss) and torch.isfinite(per_token_loss[mask.bool()]).all():
            raise ComponentContractError(
                f"{kind} {name!r}.aggregate returned a non-finite loss ({loss.item()}) from finite per-token "
                "losses; no optimizer step was taken."
            )  # non-finite per-token losses are the step's numerics, handled by the trainer's skip guard
        return loss.reshape(())

    def _log_loss_metrics(self, mode, mask, entropies, per_token_kl, out: PolicyLossOutput, advantages) -> None:
        def masked_seq_mean(x: torch.Tensor) -> torch.Tensor:
            if x.shape[1] == 1:
                return x.squeeze(1)
            return (x * mask).sum(-1) / mask.sum(-1)

        def global_masked_mean(x: torch.Tensor) -> float:
            return self._global_masked_mean(x, mask)

        metrics = self._metrics[mode]
        if per_token_kl is not None:
            metrics["kl"].append(global_masked_mean(per_token_kl.detach()))
            if mode == "train":
                self.kl_control.observe((per_token_kl.detach() * mask).sum(), mask.sum())
        metrics["entropy"].append(global_masked_mean(entropies))
        ratio = out.ratio.detach()
        metrics["approx_kl"].append(global_masked_mean((ratio - 1) - torch.log(ratio.clamp(min=1e-12))))  # vs π_old
        if out.clipped_low is not None and out.clipped_high is not None:
            low, high = out.clipped_low.float(), out.clipped_high.float()
            metrics["clip_ratio/low_mean"].append(global_masked_mean(low))
            metrics["clip_ratio/high_mean"].append(global_masked_mean(high))
            metrics["clip_ratio/region_mean"].append(global_masked_mean(((low + high) > 0).float()))
            metrics["clip_ratio/low_min"].append(nanmin(self.accelerator.gather(masked_seq_mean(low))).item())
            metrics["clip_ratio/high_max"].append(nanmax(self.accelerator.gather(masked_seq_mean(high))).item())
        for name, value in out.metrics.items():
            metrics[name].append(global_masked_mean(value.detach().float()))

    # ------------------------------------------------------------------------------------------------ controllers
    def _step_controllers(self) -> None:
        """Once per optimizer step (:class:`StepControllers`): the KL and entropy coefficients move on what the
        step's micro-batches showed, over all processes, and are logged as TRL logs them."""

        def reduce(x: torch.Tensor) -> torch.Tensor:
            return self.accelerator.reduce(x.to(self.accelerator.device), reduction="sum")

        self.kl_control.step(reduce)
        self._metrics["train"]["kl_coef"].append(self.kl_penalty.controller.beta)
        if self.entropy_control.enabled:
            self.entropy_control.step(reduce)
            self._metrics["train"]["entropy_coef"].append(self.entropy_control.coef)

    # ------------------------------------------------------------------------------------------------ numerics
    def _get_grad_norm(self, model, grad_norm=None):
        """The Trainer asks for the step's gradient norm just before the optimizer step: the place to decide, on
        every process together, whether the step is taken (:mod:`zrl_plugins.trainers.numerics`)."""
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        finite = norm is None or math.isfinite(float(norm))
        if self._nonfinite.pending is None and not finite:
            self._nonfinite.note_fault(f"the gradient norm is {float(norm)}")
        faulty = torch.tensor(float(self._nonfinite.pending is not None), device=self.accelerator.device)
        all_finite = bool(self.accelerator.reduce(faulty, reduction="sum") == 0)
        step, lr = self.state.global_step + 1, self._get_learning_rate()
        if self.is_deepspeed_enabled:  # the engine has stepped already: all that is left is to stop
            if not all_finite:
                self._nonfinite.policy = "raise"
                self._nonfinite.decide(False, step, lr)
            return norm
        if self._nonfinite.decide(all_finite, step, lr):
            for param in model.parameters():
                param.grad = None  # the optimizer then leaves every weight and its state as they are
        self._metrics["train"]["train/skipped_steps"].append(float(self._nonfinite.skipped_total))
        return norm

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """The Trainer's scheduler, whose ``step`` does nothing after a skipped optimizer step (its class is swapped
        for a subclass holding the guard, so its ``state_dict`` — what checkpoints save — is unchanged)."""
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if not getattr(type(scheduler), "_zrl_guard", None):
            scheduler.__class__ = _guarded_scheduler_class(type(scheduler), self._nonfinite)
        return scheduler

    # ------------------------------------------------------------------------------------------------ observers
    def _observe_log(self, logs: dict[str, float]) -> None:
        self.zrl_pm.call_observer("zrl_on_log", trainer=self, logs=logs)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def _stateful_components(self) -> dict[str, Any]:
        components = {
            "normalizer": self.components.advantages.component,
            "kl_penalty": self.kl_penalty.controller,
            "rollout": self.rollout_strategy,
            "nonfinite_guard": self._nonfinite,
        }
        for func, name in zip(self.reward_funcs, self.reward_func_names, strict=True):
            components[f"verifier:{name}"] = func.verifier if isinstance(func, NamedVerifier) else func
        return {
            k: v
            for k, v in components.items()
            if isinstance(v, Stateful) and not isinstance(v, torch.nn.Module)
        }

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        checkpoint_dir = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        state: dict[str, Any] = {
            "components": {key: c.state_dict() for key, c in self._stateful_components().items()},
            "plugins": {},
            "kl_window": self._kl_window.clone(),
        }
        self.zrl_pm.call_observer(
            "zrl_on_save_checkpoint", trainer=self, checkpoint_dir=checkpoint_dir, state=state["plugins"]
        )
        os.makedirs(checkpoint_dir, exist_ok=True)
        torch.save(state, os.path.join(checkpoint_dir, STATE_FILE.format(rank=self.accelerator.process_index)))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, STATE_FILE.format(rank=self.accelerator.process_index))
        if not os.path.exists(path):
            path = os.path.join(checkpoint, STATE_FILE.format(rank=0))
        if not os.path.exists(path):
            warnings.warn(
                f"{checkpoint} holds no zrl state ({STATE_FILE.format(rank='<rank>')}); components keep their initial "
                "state (KL coefficient, running statistics).",
                stacklevel=2,
            )
            state: dict[str, Any] = {"components": {}, "plugins": {}}
        else:
            state = torch.load(path, weights_only=False)
        saved = state.get("components", {})
        for key, component in self._stateful_components().items():
            if key in saved:
                component.load_state_dict(saved[key])
            elif os.path.exists(path):  # a file from an older plugin version: say which entry is missing
                warnings.warn(
                    f"checkpoint {checkpoint} has no state for {key}; keeping its initial state.", stacklevel=2
                )
        if "kl_window" in state:
            self._kl_window = state["kl_window"].clone()
        self.zrl_pm.call_observer(
            "zrl_on_load_checkpoint", trainer=self, checkpoint_dir=checkpoint, state=state.get("plugins", {})
        )

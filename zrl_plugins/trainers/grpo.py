"""``ZRLGRPOTrainer``: TRL's ``GRPOTrainer`` whose rewards, advantages, loss aggregation, KL and rollouts come from
plugins selected by name in :class:`~zrl_plugins.ZRLConfig`.

The class is the list of TRL methods zrl overrides; the work is in small modules: ``components`` (what the config
selects, built and checked once), ``rollout`` (rewards, advantages, the rollout correction), ``loss`` (the policy
objective as one function), ``controllers`` (KL and entropy coefficients, moved once per optimizer step),
``numerics`` and ``checkpoint`` (each with the mixin of its Trainer overrides: the non-finite step guard; complete,
safely loaded, setup-checked checkpoints), ``vllm_cpu`` (TRL's colocated vLLM on vLLM's CPU build),
``server_rollouts`` (generation on a ``vllm serve`` process, ahead of training with ``async_rollouts``). Everything
else — sampling, generation (transformers or TRL's vLLM modes), tool loops, PEFT, the reference model, gradient
accumulation, multi-process gathering, logging — is TRL's, unchanged.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

import torch
from accelerate.utils import gather
from transformers import Trainer
from trl import GRPOTrainer

from ..framework.data_checks import check_training_data as check_data_before_loading
from ..framework.errors import ConfigError
from ..framework.log_limits import bound_messages
from ..framework.plugins import ZRLPluginManager, get_plugin_manager
from ..framework.protocols import GroupFilter, LossContext, Stateful, ValidatesSetup
from ..framework.scored_batch import RefillContext, ScoredBatch, capturing_scores, report_scores
from ..framework.verifier_guard import NamedVerifier
from . import checkpoint, loss, padding_free
from .batch import MULTIMODAL_KEYS, loss_mask, mode_of, sequences
from .checkpointing import CheckpointOverrides
from .components import Components, build_components, call_plugin, normalizer, trl_reward_funcs, trl_rollout_func
from .config import ZRLConfig
from .controllers import ControllerAttributes, EntropyControl, KLControl, StepControllers
from .correction_options import warn_truncated_support
from .data_checks import check_enough_prompts, check_prompt_lengths, verifier_columns
from .fused_head import completion_positions_only
from .loss import Collective, CompletionForward, ObjectiveSetup
from .numerics import GuardedSteps, SkipGuard, note_nonfinite_loss
from .padding_free import Rows, check_text_only
from .rollout import (
    Advantages,
    RewardRule,
    correct_rollout,
    process_rows,
    replace_tail,
    rollout_batch_view,
    rollout_stats,
    sequence_advantages,
)
from .server_rollouts import ServerGeneration, ServerRollouts
from .server_setup import check_server_generation
from .server_setup import install as install_server_generation
from .token_budget import TokenBudgetSteps
from .token_budget import check as check_token_budget
from .vllm_cpu import check_vllm_options, engine_options, install_cpu_weight_sync, vllm_runs_on_cpu

logger = logging.getLogger(__name__)

STATE_FILE = checkpoint.STATE_FILE  # the file name the hookspec documents


class _ObservedLog(Trainer):
    """Sits between ``GRPOTrainer`` and ``Trainer`` in the MRO so observers see TRL's merged metrics."""

    zrl_pm: ZRLPluginManager

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self.zrl_pm.call_observer("zrl_on_log", trainer=self, logs=logs)
        super().log(logs, start_time)


class ZRLGRPOTrainer(
    CheckpointOverrides, GuardedSteps, ControllerAttributes, ServerRollouts, GRPOTrainer, TokenBudgetSteps, _ObservedLog
):
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
        bound_messages(GRPOTrainer.__module__)  # TRL quotes a whole row when no reward function scored it
        if args.max_completion_length is None or args.max_completion_length < 1:
            raise ConfigError(f"max_completion_length must be at least 1, got {args.max_completion_length}")
        self.components = self._build_components(args)
        setattr(self, self.components.advantages.kind, self.components.advantages.component)  # .normalizer (GRPO)
        self.policy_loss = self.components.policy_loss.component
        self.kl_penalty = self.components.kl_penalty.component
        self.rollout_strategy = self.components.rollout.component
        self.rollout_correction = self.components.rollout_correction.component
        self.correction_name = self.components.rollout_correction.name

        environments = kwargs.get("environment_factory") is not None
        reward_funcs = trl_reward_funcs(self.zrl_pm, self.components, reward_funcs, environments, args)
        kwargs["rollout_func"] = trl_rollout_func(self.components, kwargs.get("rollout_func"))

        self.entropy_control = EntropyControl.from_config(args)  # before TRL's __init__, which sets entropy_coef
        self._nonfinite = SkipGuard(args.nonfinite_policy, args.max_consecutive_skips)
        # TRL loads (and calls) a reference model iff beta != 0: on a copy of the config, that follows the KL penalty
        trl_args = copy.copy(args)
        trl_args.beta = float(self.kl_penalty.controller.beta) if self.kl_penalty.requires_reference else 0.0
        train_dataset = kwargs.get("train_dataset", pargs[0] if pargs else None)
        if train_dataset is not None:  # before TRL loads the model
            check_data_before_loading(train_dataset, verifier_columns(reward_funcs))
            check_enough_prompts(train_dataset, args)
        check_vllm_options(args.use_vllm, args.vllm_mode)
        on_cpu = args.use_vllm and vllm_runs_on_cpu()
        on_server = check_server_generation(args, on_cpu, self.components, kwargs)
        trl_args.use_vllm = args.use_vllm and not on_server  # zrl's server generation replaces TRL's vLLM
        eager = on_cpu if args.vllm_enforce_eager is None else args.vllm_enforce_eager
        with engine_options(**({"enforce_eager": True} if trl_args.use_vllm and eager else {})):
            super().__init__(model, reward_funcs, trl_args, *pargs, **kwargs)
        if on_server:
            install_server_generation(self, args, model)
        elif on_cpu and args.vllm_mode == "colocate":
            install_cpu_weight_sync(self.vllm_generation)
        self.padding_free = padding_free.settings_for(self)  # None unless args.padding_free
        check_token_budget(self)
        self.vllm_importance_sampling_correction = False  # TRL's ratio: the rollout_correction component computes it
        warn_truncated_support(args, self.correction_name)
        self.reward_rule = RewardRule(self.reward_weights, args.multi_objective_aggregation, args.truncated_reward)
        accelerator = self.accelerator
        self.collective = Collective(
            lambda x: accelerator.reduce(x.to(accelerator.device), reduction="sum"),
            accelerator.gather,
            accelerator.gather_for_metrics,
            accelerator.device,
        )
        samples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        self.kl_control = KLControl(self.kl_penalty, samples_per_step * accelerator.num_processes)
        log_train = partial(self._log_metrics, "train")
        self.controllers = StepControllers(self.kl_control, self.entropy_control, self.collective.reduce_sum, log_train)
        self.add_callback(self.controllers)
        quantile = self.top_entropy_quantile
        high_entropy_mask = partial(self.get_high_entropy_mask, threshold=1 - quantile) if quantile < 1.0 else None
        self.objective_setup = ObjectiveSetup(
            pm=self.zrl_pm,
            policy_loss=self.components.policy_loss,
            aggregator=self.components.advantages,
            kl_penalty=self.kl_penalty,
            kl_in_loss=self.kl_penalty.placement == "loss" and self.beta != 0.0,
            bias_correction_kl=self.args.use_bias_correction_kl,
            entropy_control=self.entropy_control,
            aux_loss_coef=self.router_aux_loss_coef if self.aux_loss_enabled else None,
            off_policy_mask_threshold=self.off_policy_mask_threshold,
            high_entropy_mask=high_entropy_mask,
            kl_penalty_name=self.components.kl_penalty.name,
        )
        if isinstance(self.rollout_strategy, ValidatesSetup):
            self.rollout_strategy.validate(self)  # e.g. a strategy that cannot work with TRL's vLLM modes refuses
        if self.train_dataset is not None:
            # with environments, each prompt is rendered with its environment's tools only at batch time
            tokenize = self._tokenize_prompts if self.environment_factories is None else None
            context = getattr(self.model.config, "max_position_embeddings", None)
            check_prompt_lengths(self.train_dataset, tokenize, context, self.max_completion_length)

    # ------------------------------------------------------------------------------------------------ construction
    def _build_components(self, args: ZRLConfig) -> Components:
        """The GRPO family: advantages from a normalizer, the KL penalty's β from the config."""
        return build_components(self.zrl_pm, args, normalizer, {"beta": args.beta})

    # ------------------------------------------------------------------------------------------------ rollout pipeline
    def _generate_and_score_completions(self, inputs):
        """score → group filter → reward shaping → advantages → observers, over one :class:`ScoredBatch` value."""
        batch = self._score(inputs)
        if batch.mode == "train" and isinstance(self.rollout_strategy, GroupFilter):
            batch = self._filter_groups(batch)
        # group statistics are taken over the global batch; the advantages are sliced to this process once
        rewards = self.reward_rule.rewards(batch.rewards_per_func, batch.truncated, batch.group_size)
        advantages = self._advantages(batch, rewards)
        output = {**batch.output, **advantages.columns, "advantages": advantages.local}
        replace_tail(self._logs["advantages"], advantages.logged)  # TRL logged its own normalizer's advantages
        if self.zrl_pm.has_observers("zrl_on_rollout_batch"):  # decoding text is not free: only when watched
            completions = self.processing_class.batch_decode(output["completion_ids"], skip_special_tokens=True)
            funcs = (batch.rewards_per_func, list(self.reward_func_names))
            view = rollout_batch_view(batch, output, completions, advantages.rewards, *funcs, self.state.global_step)
            self.zrl_pm.call_observer("zrl_on_rollout_batch", trainer=self, batch=view)
        return output

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
        """TRL's generation and scoring of this process's rows (rewards of all processes, as TRL gathers them),
        plus π_old log-probs (off-policy strategies, or a correction to compute) and the rollout correction
        wherever the behaviour policy reported log-probs."""
        with capturing_scores() as scores:
            output = super()._generate_and_score_completions(inputs)
        mode = mode_of(self.model)
        behaviour = output.get("sampling_per_token_logps")
        correcting = behaviour is not None and self.correction_name != "none"
        if (self.rollout_strategy.off_policy or correcting) and "old_per_token_logps" not in output:
            output["old_per_token_logps"] = self._policy_logps(output)
        if behaviour is not None and "old_per_token_logps" in output:
            selected = self.components.rollout_correction, self.components.rollout
            columns, stats = correct_rollout(self.zrl_pm, *selected, output, self.accelerator.gather)
            output.update(columns)
            self._log_metrics(mode, rollout_stats(stats, self.accelerator.gather, self.accelerator.device, prefix=""))
        device = scores.rewards_per_func.device
        truncated = gather(torch.tensor(scores.truncated, dtype=torch.bool, device=device))
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        local = process_rows(len(output["prompt_ids"]), self.accelerator.process_index)
        return ScoredBatch(list(inputs), output, scores.rewards_per_func, truncated, mode, group_size, local)

    def _filter_groups(self, batch: ScoredBatch) -> ScoredBatch:
        """Hand the batch to the rollout strategy's group filter (DAPO dynamic sampling), with the core's means to
        score more rows; then share the changed rows' rewards and recount the loss tokens over all processes."""

        def group_rewards(scored: ScoredBatch) -> torch.Tensor:
            local = (scored.local_rewards_per_func, scored.local_truncated)
            rewards = self.reward_rule.rewards(*local, scored.group_size)
            return rewards.view(-1, scored.group_size)

        ctx = RefillContext(
            score_more=self._score,
            group_rewards=group_rewards,
            any_process=self.collective.any_process,
            dataset=self.train_dataset,
            process_index=self.accelerator.process_index,
        )
        batch, stats = call_plugin(self.zrl_pm, self.components.rollout, "refill", batch, ctx)
        kept = loss_mask(batch.output) * batch.output.get("rollout_correction_mask", 1)
        batch.output["num_items_in_batch"] = self.accelerator.gather(kept.sum()).sum()
        self._log_metrics("train", rollout_stats(stats, self.accelerator.gather, self.accelerator.device))
        return batch.synced(self.accelerator.gather)

    def _reward_placed_kl(self, output: dict[str, Any], mask: torch.Tensor, mode: str) -> torch.Tensor:
        """β-free per-token KL of this process's rows (B x T, masked) for a KL penalty placed in the reward."""
        logps = output.get("old_per_token_logps")
        if logps is None:
            logps = self._policy_logps(output)
        ref_logps = output["ref_per_token_logps"]
        name = self.components.kl_penalty.name
        per_token_kl = loss.checked_kl(name, self.kl_penalty.per_token(logps, ref_logps), logps, ref_logps) * mask
        self._metrics[mode]["kl"].append(self.collective.masked_mean(per_token_kl, mask))
        if mode == "train":
            self.controllers.observe((per_token_kl.sum(), mask.sum()), None)
        return per_token_kl

    def _advantages(self, batch: ScoredBatch, rewards: torch.Tensor) -> Advantages:
        """The normalizer's advantages of the global rewards, a reward-placed KL summed per sequence and subtracted
        first. The PPO trainer overrides this with per-token rewards, an estimator and a critic."""
        if self.kl_penalty.placement == "reward" and self.kl_penalty.controller.beta != 0.0:
            sequence_kl = gather(self._reward_placed_kl(batch.output, loss_mask(batch.output), batch.mode).sum(-1))
            rewards = rewards - self.kl_penalty.controller.beta * sequence_kl
        selected = self.components.advantages
        advantages = sequence_advantages(self.zrl_pm, selected, rewards, batch.group_size, batch.mode)
        return Advantages(local=advantages[batch.local], logged=advantages, rewards=rewards)

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
        return self._loss_from_forward(self._forward_completions(model, inputs), inputs, mode_of(self.model))

    def _loss_from_forward(
        self, forward: CompletionForward, inputs: dict[str, Any], mode: str, record: bool = True
    ) -> torch.Tensor:
        """The micro-batch's loss given its forward pass. ``record=False`` (a token-budget part before the last,
        :mod:`.token_budget`): neither metrics nor controller observations nor the non-finite check, which the
        last part makes over all rows."""
        loss = self._policy_objective(forward, inputs, mode, record)
        if mode == "train" and record:
            step = self.state.global_step + 1
            note_nonfinite_loss(loss, self._nonfinite, self.is_deepspeed_enabled, self.collective.any_process, step)
        return loss

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        on_pack: Callable[[Rows], None] | None = None,
        **multimodal: Any,
    ):
        # On CPU, TRL's fused LM head projects every position; only the completion's are needed (fused_head.py)
        with completion_positions_only(self.accelerator.device):
            if self.padding_free is None:
                return super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss,
                    **multimodal,
                )  # fmt: skip
            check_text_only(multimodal)
            logps, entropies = padding_free.logps_and_entropies(
                self.padding_free,
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size=batch_size,
                compute_entropy=compute_entropy,
                autocast=self.accelerator.autocast,
                on_pack=on_pack,
            )
            return logps, entropies, None

    def _forward_completions(self, model, inputs) -> CompletionForward:
        """One forward pass of ``model`` over the batch's prompts + completions: per-token log-probs and entropies of
        the completion tokens (TRL's fused LM head) and the MoE aux loss. The PPO trainer adds values here."""
        input_ids, attention_mask = sequences(inputs)
        multimodal = {key: inputs.get(key) for key in MULTIMODAL_KEYS}
        packs: list[Rows] = []
        logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            inputs["completion_ids"].size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            on_pack=packs.append,
            **multimodal,
        )
        layout = partial(padding_free.unpack_each, packs) if self.padding_free is not None else torch.cat
        return CompletionForward(logps=logps, entropies=entropies, aux_loss=aux_loss, sequence_layout=layout)

    def _policy_objective(
        self, forward: CompletionForward, inputs: dict[str, Any], mode: str, record: bool = True
    ) -> torch.Tensor:
        """The micro-batch's policy objective (:func:`zrl_plugins.trainers.loss.objective`); in training, the
        controllers observe what it showed (they move at the optimizer step)."""
        ctx = self._loss_context(inputs, mode)
        result = loss.objective(self.objective_setup, forward, inputs, ctx, self.collective)
        if not record:
            return result.loss
        if mode == "train":
            self.controllers.observe(result.kl, result.entropy)
        self._log_metrics(mode, result.metrics)
        return result.loss

    def _loss_context(self, inputs: dict[str, Any], mode: str) -> LossContext:
        return LossContext(
            num_items_in_batch=float(inputs["num_items_in_batch"]),
            num_processes=self.accelerator.num_processes,
            gradient_accumulation_steps=self.current_gradient_accumulation_steps if mode == "train" else 1,
            steps_per_generation=self.args.steps_per_generation,
            max_completion_length=self.max_completion_length,
            training=mode == "train",
        )

    def _log_metrics(self, mode: str, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self._metrics[mode][name].append(value)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def _stateful_components(self) -> dict[str, Any]:
        """The components whose state checkpoints save and restore (:class:`CheckpointOverrides`)."""
        components = {
            "normalizer": self.components.advantages.component,
            "kl_penalty": self.kl_penalty.controller,
            "rollout": self.rollout_strategy,
            "nonfinite_guard": self._nonfinite,
        }
        if isinstance(getattr(self, "vllm_generation", None), ServerGeneration):
            components["rollout_stream"] = self.vllm_generation
        for func, name in zip(self.reward_funcs, self.reward_func_names, strict=True):
            components[f"verifier:{name}"] = func.verifier if isinstance(func, NamedVerifier) else func
        return {k: v for k, v in components.items() if isinstance(v, Stateful) and not isinstance(v, torch.nn.Module)}

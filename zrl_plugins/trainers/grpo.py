"""``ZRLGRPOTrainer``: TRL's ``GRPOTrainer`` whose rewards, advantages, loss aggregation, KL and rollouts come from
plugins selected by name in :class:`~zrl_plugins.ZRLConfig`.

The class is the list of TRL methods zrl overrides; the work is in small modules: ``components`` (what the config
selects, built and checked once), ``rollout`` (rewards and advantages), ``loss`` (the policy objective's parts),
``controllers`` (KL and entropy coefficients, moved once per optimizer step), ``numerics`` (the non-finite step
guard), ``checkpoint`` (complete, safely loaded, setup-checked checkpoints), ``vllm_cpu`` (TRL's colocated vLLM on
vLLM's CPU build). Everything else — sampling, generation (transformers or TRL's vLLM modes), tool loops, PEFT, the
reference model, gradient accumulation, multi-process gathering, logging — is TRL's, unchanged.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, ClassVar

import torch
from accelerate.utils import gather
from transformers import Trainer
from trl import GRPOTrainer

from ..framework.data_checks import check_training_data as check_data_before_loading
from ..framework.errors import ConfigError
from ..framework.log_limits import bound_messages
from ..framework.plugins import ZRLPluginManager, get_plugin_manager
from ..framework.protocols import (
    GroupFilter,
    LossContext,
    ObservesMismatch,
    Stateful,
    ValidatesSetup,
)
from ..framework.rollout_correction import checked_correction, mismatch_stats
from ..framework.scored_batch import RefillContext, ScoredBatch, capturing_scores, report_scores
from ..framework.verifier_guard import NamedVerifier
from . import checkpoint, loss
from .batch import MULTIMODAL_KEYS, loss_mask, mode_of, sequences
from .components import Components, build_components, call_plugin, normalizer, trl_reward_funcs, trl_rollout_func
from .config import ZRLConfig
from .controllers import ControllerAttributes, EntropyControl, KLControl, StepControllers
from .correction_options import warn_truncated_support
from .data_checks import check_prompt_lengths, verifier_columns
from .fused_head import completion_positions_only
from .loss import Collective, CompletionForward
from .numerics import SkipGuard, decide_step, guarded_scheduler_class, note_nonfinite_loss
from .rollout import (
    Advantages,
    RewardRule,
    process_rows,
    replace_tail,
    rollout_batch_view,
    rollout_stats,
    sequence_advantages,
)
from .vllm_cpu import check_vllm_options, engine_options, install_cpu_weight_sync, vllm_runs_on_cpu

logger = logging.getLogger(__name__)

STATE_FILE = checkpoint.STATE_FILE  # the file name the hookspec documents


class _ObservedLog(Trainer):
    """Sits between ``GRPOTrainer`` and ``Trainer`` in the MRO so observers see TRL's merged metrics."""

    zrl_pm: ZRLPluginManager

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self.zrl_pm.call_observer("zrl_on_log", trainer=self, logs=logs)
        super().log(logs, start_time)


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
        reward_funcs = trl_reward_funcs(self.zrl_pm, self.components, reward_funcs, environments)
        kwargs["rollout_func"] = trl_rollout_func(self.components, kwargs.get("rollout_func"))

        self.entropy_control = EntropyControl.from_config(args)  # before TRL's __init__, which sets entropy_coef
        self._nonfinite = SkipGuard(args.nonfinite_policy, args.max_consecutive_skips)
        # TRL loads (and calls) a reference model iff beta != 0: on a copy of the config, that follows the KL penalty
        trl_args = copy.copy(args)
        trl_args.beta = float(self.kl_penalty.controller.beta) if self.kl_penalty.requires_reference else 0.0
        train_dataset = kwargs.get("train_dataset", pargs[0] if pargs else None)
        if train_dataset is not None:  # before TRL loads the model
            check_data_before_loading(train_dataset, verifier_columns(reward_funcs))
        check_vllm_options(args.use_vllm, args.vllm_mode)
        on_cpu = args.use_vllm and vllm_runs_on_cpu()
        eager = on_cpu if args.vllm_enforce_eager is None else args.vllm_enforce_eager
        with engine_options(**({"enforce_eager": True} if args.use_vllm and eager else {})):
            super().__init__(model, reward_funcs, trl_args, *pargs, **kwargs)
        if on_cpu and args.vllm_mode == "colocate":
            install_cpu_weight_sync(self.vllm_generation)
        self.vllm_importance_sampling_correction = False  # TRL's ratio: the rollout_correction component computes it
        warn_truncated_support(args, self.correction_name)
        self.reward_rule = RewardRule(self.reward_weights, args.multi_objective_aggregation, args.truncated_reward)
        samples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        self.kl_control = KLControl(self.kl_penalty, samples_per_step * self.accelerator.num_processes)
        self.add_callback(StepControllers(self._step_controllers))
        accelerator = self.accelerator
        self.collective = Collective(
            lambda x: accelerator.reduce(x, reduction="sum"), accelerator.gather, accelerator.gather_for_metrics
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
        rewards_per_func = gather(batch.rewards_per_func)  # group statistics are taken over the global batch
        rewards = self.reward_rule.rewards(rewards_per_func, gather(batch.truncated), batch.group_size)
        advantages = self._advantages(batch.output, rewards, batch.mode, batch.group_size)
        output = {**batch.output, **advantages.columns, "advantages": advantages.local}
        replace_tail(self._logs["advantages"], advantages.logged)  # TRL logged its own normalizer's advantages
        if self.zrl_pm.has_observers("zrl_on_rollout_batch"):  # decoding text is not free: only when watched
            completions = self.processing_class.batch_decode(output["completion_ids"], skip_special_tokens=True)
            funcs = (rewards_per_func, list(self.reward_func_names))
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
        """TRL's generation and scoring of this process's rows, plus π_old log-probs (off-policy strategies, or a
        correction to compute) and the rollout correction wherever the behaviour policy reported log-probs."""
        with capturing_scores() as scores:
            output = super()._generate_and_score_completions(inputs)
        mode = mode_of(self.model)
        mask = loss_mask(output)
        behaviour = output.get("sampling_per_token_logps")
        correcting = behaviour is not None and self.correction_name != "none"
        if (self.rollout_strategy.off_policy or correcting) and "old_per_token_logps" not in output:
            output["old_per_token_logps"] = self._policy_logps(output)
        if behaviour is not None and "old_per_token_logps" in output:
            self._correct_rollout(output, mask, mode)
        local = process_rows(len(output["prompt_ids"]), self.accelerator.process_index)
        device = scores.rewards_per_func.device
        truncated = torch.tensor(scores.truncated, dtype=torch.bool, device=device)
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        rewards_per_func = scores.rewards_per_func[local]
        return ScoredBatch(list(inputs), output, rewards_per_func, truncated, mode, group_size)

    def _correct_rollout(self, output: dict[str, Any], mask: torch.Tensor, mode: str) -> None:
        """The rollout correction: its weights become ``importance_sampling_ratio`` (the loss multiplies by it), its
        rejection mask ``rollout_correction_mask`` (multiplied into the loss mask); the mismatch is logged."""
        old, behaviour = output["old_per_token_logps"], output["sampling_per_token_logps"]
        selected = self.components.rollout_correction
        out = call_plugin(self.zrl_pm, selected, "__call__", old, behaviour, mask)
        weights, rejection = checked_correction(selected.name, out, old, mask)
        output["importance_sampling_ratio"] = weights
        if rejection is not None:
            output["rollout_correction_mask"] = rejection
        # recounted on every process alike (one process may reject nothing while another does)
        kept = mask if rejection is None else mask * rejection
        output["num_items_in_batch"] = self.accelerator.gather(kept.sum()).sum()
        stats = mismatch_stats(old, behaviour, mask, weights, rejection)
        stats.update({f"rollout/{key}": value for key, value in out.metrics.items()})
        if isinstance(self.rollout_strategy, ObservesMismatch):
            call_plugin(self.zrl_pm, self.components.rollout, "observe_mismatch", stats)
        self._log_metrics(mode, rollout_stats(stats, self.accelerator.gather, self.accelerator.device, prefix=""))

    def _filter_groups(self, batch: ScoredBatch) -> ScoredBatch:
        """Hand the batch to the rollout strategy's group filter (DAPO dynamic sampling), with the core's means to
        score more rows; then recount the loss tokens over all processes."""

        def group_rewards(scored: ScoredBatch) -> torch.Tensor:
            rewards = self.reward_rule.rewards(scored.rewards_per_func, scored.truncated, scored.group_size)
            return rewards.view(-1, scored.group_size)

        ctx = RefillContext(
            score_more=self._score,
            group_rewards=group_rewards,
            any_process=self._any_process,
            dataset=self.train_dataset,
            process_index=self.accelerator.process_index,
        )
        batch, stats = call_plugin(self.zrl_pm, self.components.rollout, "refill", batch, ctx)
        kept = loss_mask(batch.output) * batch.output.get("rollout_correction_mask", 1)
        batch.output["num_items_in_batch"] = self.accelerator.gather(kept.sum()).sum()
        self._log_metrics("train", rollout_stats(stats, self.accelerator.gather, self.accelerator.device))
        return batch

    def _reward_placed_kl(self, output: dict[str, Any], mask: torch.Tensor, mode: str) -> torch.Tensor:
        """β-free per-token KL of this process's rows (B x T, masked) for a KL penalty placed in the reward."""
        logps = output.get("old_per_token_logps")
        if logps is None:
            logps = self._policy_logps(output)
        per_token_kl = self.kl_penalty.per_token(logps, output["ref_per_token_logps"]) * mask
        self._metrics[mode]["kl"].append(self.collective.masked_mean(per_token_kl, mask))
        if mode == "train":
            self.kl_control.observe(per_token_kl.sum(), mask.sum())
        return per_token_kl

    def _advantages(self, output: dict[str, Any], rewards: torch.Tensor, mode: str, group_size: int) -> Advantages:
        """The normalizer's advantages of the global rewards, a reward-placed KL summed per sequence and subtracted
        first. The PPO trainer overrides this with per-token rewards, an estimator and a critic."""
        if self.kl_penalty.placement == "reward" and self.kl_penalty.controller.beta != 0.0:
            sequence_kl = gather(self._reward_placed_kl(output, loss_mask(output), mode).sum(-1))
            rewards = rewards - self.kl_penalty.controller.beta * sequence_kl
        advantages = sequence_advantages(self.zrl_pm, self.components.advantages, rewards, group_size, mode)
        local = process_rows(len(output["prompt_ids"]), self.accelerator.process_index)
        return Advantages(local=advantages[local], logged=advantages, rewards=rewards)

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
        if mode == "train":
            step = self.state.global_step + 1
            note_nonfinite_loss(loss, self._nonfinite, self.is_deepspeed_enabled, self._any_process, step)
        return loss

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any):
        # On CPU, TRL's fused LM head projects every position; only the completion's are needed (fused_head.py)
        with completion_positions_only(self.accelerator.device):
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)

    def _forward_completions(self, model, inputs) -> CompletionForward:
        """One forward pass of ``model`` over the batch's prompts + completions: per-token log-probs and entropies of
        the completion tokens (TRL's fused LM head) and the MoE aux loss. The PPO trainer adds values here."""
        input_ids, attention_mask = sequences(inputs)
        multimodal = {key: inputs.get(key) for key in MULTIMODAL_KEYS}
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
        normalizer) → entropy bonus and router aux loss, in TRL's order (:mod:`zrl_plugins.trainers.loss`)."""
        mask = loss_mask(inputs)
        if "rollout_correction_mask" in inputs:  # the rollout correction's rejections leave the loss
            mask = mask * inputs["rollout_correction_mask"]
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        old_logps = inputs.get("old_per_token_logps")
        if old_logps is None:
            old_logps = forward.logps.detach()
        sampling_ratio = inputs.get("importance_sampling_ratio")
        loss_inputs = (forward.logps, old_logps, advantages, mask, sampling_ratio)
        out = loss.policy_loss(self.zrl_pm, self.components.policy_loss, *loss_inputs)
        per_token_loss, entropy_mask = self._masked(out.per_token_loss, forward, inputs, advantages, mask, old_logps)
        if sampling_ratio is not None and not getattr(self.policy_loss, "uses_importance_sampling_ratio", False):
            per_token_loss = per_token_loss * sampling_ratio
        per_token_kl = None
        if self.kl_penalty.placement == "loss" and self.beta != 0.0:
            kl_inputs = (forward.logps, inputs["ref_per_token_logps"], out.ratio, self.args.use_bias_correction_kl)
            per_token_kl = loss.kl_term(self.kl_penalty, *kl_inputs)
            per_token_loss = per_token_loss + self.kl_penalty.controller.beta * per_token_kl
            if mode == "train":
                self.kl_control.observe((per_token_kl.detach() * mask).sum(), mask.sum())

        ctx = self._loss_context(inputs, mode)
        total = loss.aggregate(self.zrl_pm, self.components.advantages, per_token_loss, mask, ctx)
        bonus, metrics = torch.zeros((), device=total.device), {}
        if self.entropy_control.enabled:
            entropy_mask = mask if entropy_mask is None else mask * entropy_mask
            bonus_inputs = (forward.entropies, entropy_mask, total.detach(), ctx, self.collective)
            entropy_bonus, metrics = loss.entropy_bonus(self.entropy_control, *bonus_inputs)
            bonus = bonus + entropy_bonus
            if mode == "train":
                self.entropy_control.observe(forward.entropies, entropy_mask)
        if self.aux_loss_enabled:
            aux, aux_metrics = loss.aux_loss_term(forward.aux_loss, self.router_aux_loss_coef, ctx, self.collective)
            bonus, metrics = bonus + aux, {**metrics, **aux_metrics}
        total = total + bonus
        metrics.update(loss.policy_metrics(out, forward.entropies, per_token_kl, mask, self.collective))
        self._log_metrics(mode, metrics)
        return total

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

    def _loss_context(self, inputs: dict[str, Any], mode: str) -> LossContext:
        return LossContext(
            num_items_in_batch=float(inputs["num_items_in_batch"]),
            num_processes=self.accelerator.num_processes,
            gradient_accumulation_steps=self.current_gradient_accumulation_steps if mode == "train" else 1,
            steps_per_generation=self.args.steps_per_generation,
            max_completion_length=self.max_completion_length,
            training=mode == "train",
        )

    def _any_process(self, flag: bool) -> bool:
        """Whether ``flag`` holds on some process (a collective call)."""
        return bool(self.accelerator.reduce(torch.tensor([float(flag)], device=self.accelerator.device)) > 0)

    def _log_metrics(self, mode: str, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self._metrics[mode][name].append(value)

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
        step, lr = self.state.global_step + 1, self._get_learning_rate()
        if decide_step(self._nonfinite, norm, self._any_process, self.is_deepspeed_enabled, step, lr):
            for param in model.parameters():
                param.grad = None  # the optimizer then leaves every weight and its state as they are
        if self.is_deepspeed_enabled:
            return norm
        self._metrics["train"]["train/skipped_steps"].append(float(self._nonfinite.skipped_total))
        return norm

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """The Trainer's scheduler, whose ``step`` does nothing after a skipped optimizer step (its class is swapped
        for a subclass holding the guard, so its ``state_dict`` — what checkpoints save — is unchanged)."""
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if not getattr(type(scheduler), "_zrl_guard", None):
            scheduler.__class__ = guarded_scheduler_class(type(scheduler), self._nonfinite)
        return scheduler

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
        return {k: v for k, v in components.items() if isinstance(v, Stateful) and not isinstance(v, torch.nn.Module)}

    def _save_checkpoint(self, model, trial):
        """TRL's save without its rotation, every process's zrl state, the completion marker, then rotation."""
        checkpoint.save(self, trial, lambda: super(ZRLGRPOTrainer, self)._save_checkpoint(model, trial))

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """Resume only from a complete checkpoint trained with this setup (or with ``resume_override``)."""
        if resume_from_checkpoint:
            resume_from_checkpoint = checkpoint.prepare_resume(self, resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_optimizer_and_scheduler(self, checkpoint_dir):
        super()._load_optimizer_and_scheduler(checkpoint_dir)
        if checkpoint_dir is not None:
            checkpoint.restore(self, checkpoint_dir)

"""``ZRLPPOTrainer``: actor-critic PPO (and PPO-max) on the GRPO trainer's rollout machinery (docs/methods.md).

Generation, verifiers, the reference model, PEFT, gradient accumulation, multi-process gathering, logging and
checkpoints are :class:`~zrl_plugins.ZRLGRPOTrainer`'s (hence TRL's). What changes:

* advantages are per token, from a :class:`~zrl_plugins.sdk.TokenAdvantageEstimator` selected as the
  ``advantage_estimator`` (``gae`` by default): per-token rewards are the (running-scaled, clipped) verifier score at
  the last completion token minus β·KL_t from the KL plugin (placement ``reward``);
* a critic gives V_old at rollout time and is trained with the clipped value loss in the same backward pass as the
  actor. It is attached to the policy as a child module (:mod:`zrl_plugins.trainers.critic`), so the engine the Trainer
  prepares — DDP, DeepSpeed ZeRO-2/3 or FSDP2 — shards, reduces, optimizes and checkpoints actor and critic
  together: one optimizer with the critic's own parameter groups (own learning rate, same schedule; actor held at lr
  0 for ``critic_warmup_steps``). Outside DeepSpeed, actor and critic gradients are clipped to ``max_grad_norm``
  separately; DeepSpeed clips inside its engine, over both at once;
* PPO epochs and mini-batches are TRL's ``num_iterations`` and ``steps_per_generation``.

``critic_mode="separate"``: a token-classification copy of the backbone (or a reward model) with a value head;
``critic_mode="shared"``: a value head on the policy's own decoder, fed from the same forward pass as the policy's
log-probs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import Any, ClassVar

import torch
from torch.optim.lr_scheduler import LambdaLR

from ..framework.errors import ConfigError
from ..framework.ops import token_mean_aggregate
from ..framework.scored_batch import ScoredBatch
from . import padding_free
from .batch import loss_mask, sequences
from .components import Components, advantage_estimator, build_components, call_plugin
from .critic import (
    ValueHead,
    attach_value_model,
    clipped_value_loss,
    completion_slice,
    critic_values,
    decoder_of,
    detached_value_model,
    is_critic_key,
    load_critic,
    split_state_dict,
    value_model_of,
    values_in_forward,
    without_critic,
)
from .grpo import ZRLGRPOTrainer
from .loss import CompletionForward
from .numerics import note_nonfinite_loss
from .ppo_advantages import check_token_advantages, critic_metrics, last_token_rewards, whitened_and_clipped
from .ppo_config import ZRLPPOConfig
from .rollout import Advantages
from .running_stats import RunningMoments

CRITIC_DIR = "critic"


def _actor_gate(warmup_steps: int, schedule):
    def gated(step: int) -> float:
        return 0.0 if step < warmup_steps else schedule(step)

    return gated


class ZRLPPOTrainer(ZRLGRPOTrainer):
    """PPO with a critic whose advantage estimator, KL penalty, verifiers and rollouts are plugins.

    Args:
        model, reward_funcs, args, ...: as :class:`~zrl_plugins.ZRLGRPOTrainer` (``args`` a :class:`ZRLPPOConfig`).
        critic: a ready value model (a token-classification model: ``critic(input_ids=..., attention_mask=...)
            .logits[..., 0]`` are the values); default: loaded from ``args.critic_model_name_or_path`` or the
            policy's weights (``critic_mode="separate"``), or a value head (``"shared"``).
        pretrain_dataset: texts (column ``text``) for the pretraining-loss mixing of ``args.ptx_coef``.
    """

    _tag_names: ClassVar[list[str]] = ["trl", "ppo", "zrl"]
    _name = "ZRL-PPO"

    def __init__(
        self,
        model: Any,
        reward_funcs: Any = None,
        args: ZRLPPOConfig | None = None,
        *pargs: Any,
        critic: torch.nn.Module | None = None,
        pretrain_dataset: Any = None,
        **kwargs: Any,
    ):
        if args is None:
            args = ZRLPPOConfig(output_dir="zrl-ppo-output")
        if not isinstance(args, ZRLPPOConfig):
            raise TypeError(f"ZRLPPOTrainer needs a ZRLPPOConfig (got {type(args).__name__})")
        if args.ptx_coef > 0 and pretrain_dataset is None:
            raise ConfigError("ptx_coef > 0 mixes in a pretraining loss: pass pretrain_dataset (a `text` column)")
        if kwargs.get("optimizers", (None, None))[0] is not None:
            raise ConfigError("ZRLPPOTrainer builds its own optimizer (actor and critic parameter groups)")
        super().__init__(model, reward_funcs, args, *pargs, **kwargs)
        self.reward_moments = RunningMoments()
        if self.advantage_estimator.needs_critic:
            attach_value_model(self.model, self._make_critic(critic))
            if self.padding_free is not None and not self.shared_critic:  # a separate critic packs its rows too
                padding_free.check_model(self.critic, aux_loss=False, multimodal=False)
            if self.use_vllm:  # TRL's weight sync walks the policy's parameters, which now include the critic's
                sync = self.vllm_generation
                sync._iter_named_params = without_critic(sync._iter_named_params)
        elif critic is not None:
            warnings.warn(
                f"advantage_estimator {args.advantage_estimator!r} needs no critic; the critic passed is unused",
                stacklevel=2,
            )
        self._ptx_batches = self._pretrain_batches(pretrain_dataset) if args.ptx_coef > 0 else None

    @property
    def critic(self) -> torch.nn.Module | None:
        """The value model attached to the policy: a token-classification critic (``separate``), a
        :class:`~zrl_plugins.trainers.critic.ValueHead` (``shared``), or ``None`` for a critic-free estimator."""
        return value_model_of(self.model)

    @property
    def shared_critic(self) -> bool:
        return isinstance(self.critic, ValueHead)

    # ------------------------------------------------------------------------------------------------ construction
    def _build_components(self, args: ZRLPPOConfig) -> Components:
        """PPO: advantages from a per-token estimator, the KL penalty placed in the reward unless configured."""
        return build_components(self.zrl_pm, args, advantage_estimator, {"beta": args.beta, "placement": "reward"})

    def _make_critic(self, critic: torch.nn.Module | None) -> torch.nn.Module:
        dtype = next(self.model.parameters()).dtype  # the critic follows the policy's dtype
        if critic is None and self.args.critic_mode == "shared":
            hidden = self.model.config.get_text_config().hidden_size
            critic = ValueHead(hidden, dtype=dtype)
        if critic is None:
            source = self.args.critic_model_name_or_path or self.model.config._name_or_path
            critic = load_critic(source, dtype=dtype, **self._critic_init_kwargs(source))
        if self.args.gradient_checkpointing and hasattr(critic, "gradient_checkpointing_enable"):
            critic.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs or {"use_reentrant": False}
            )
        if self.place_model_on_device:  # DeepSpeed and FSDP place (and shard) the whole model themselves
            critic.to(self.accelerator.device)
        critic.train()
        return critic

    def _critic_init_kwargs(self, source: str) -> dict[str, Any]:
        """The policy's loading options that also fit its critic: attention implementation and remote code (and
        the revision, when the critic comes from the policy's own checkpoint). Quantization is not passed on: the
        critic is trained in full."""
        kwargs = self.args.model_init_kwargs or {}
        keep = {"attn_implementation", "trust_remote_code"}
        if source == self.model.config._name_or_path:
            keep.add("revision")
        return {k: v for k, v in kwargs.items() if k in keep and v is not None}

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """TRL's / the Trainer's optimizer, with the critic's parameters moved into groups of their own
        (``critic_learning_rate``; marked ``zrl_critic``) — before any step, so no optimizer state exists yet."""
        optimizer = super().create_optimizer(model)
        if self.critic is None or any(group.get("zrl_critic") for group in optimizer.param_groups):
            return optimizer
        opt_model = self.model if model is None else model
        named = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad and is_critic_key(n)]
        critic_ids = {id(p) for _, p in named}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in critic_ids]
        optimizer.param_groups[:] = [group for group in optimizer.param_groups if group["params"]]
        decay = set(self.get_decay_parameter_names(opt_model))
        for params, weight_decay in (
            ([p for n, p in named if n in decay], self.args.weight_decay),
            ([p for n, p in named if n not in decay], 0.0),
        ):
            if params:
                optimizer.add_param_group(
                    {
                        "params": params,
                        "lr": self.args.critic_learning_rate,
                        "weight_decay": weight_decay,
                        "zrl_critic": True,
                    }
                )
        return optimizer

    def _clip_grad_norm(self, model: torch.nn.Module) -> torch.Tensor | float | None:
        """Clip actor and critic gradients to ``max_grad_norm`` each (their scales differ by orders of magnitude);
        returns the actor's norm, the one logged as ``grad_norm``. DeepSpeed clips inside its engine, over both."""
        if self.critic is None or self.is_deepspeed_enabled:
            return super()._clip_grad_norm(model)
        actor, critic = [], []
        for name, param in model.named_parameters():
            (critic if is_critic_key(name) else actor).append(param)
        actor_norm = self.accelerator.clip_grad_norm_(actor, self.args.max_grad_norm)
        critic_norm = self.accelerator.clip_grad_norm_(critic, self.args.max_grad_norm)
        self._metrics["train"]["critic/grad_norm"].append(float(critic_norm))
        if not math.isfinite(float(critic_norm)):
            self._nonfinite.note_fault(f"the critic's gradient norm is {float(critic_norm)}")
        return actor_norm

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        warmup = self.args.critic_warmup_steps
        if not warmup:
            return scheduler
        if not isinstance(scheduler, LambdaLR):
            raise ConfigError(
                f"critic_warmup_steps needs a LambdaLR schedule; lr_scheduler_type={self.args.lr_scheduler_type!r} "
                f"gives {type(scheduler).__name__}"
            )
        groups = scheduler.optimizer.param_groups
        scheduler.lr_lambdas = [
            fn if group.get("zrl_critic") else _actor_gate(warmup, fn)
            for fn, group in zip(scheduler.lr_lambdas, groups, strict=True)
        ]
        for group, base_lr, fn in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
            group["lr"] = base_lr * fn(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in groups]
        return scheduler

    def _pretrain_batches(self, dataset: Any):
        if "text" not in (dataset.column_names or []):
            raise ConfigError(f"pretrain_dataset needs a `text` column; it has {dataset.column_names}")
        size = self.args.per_device_train_batch_size
        generator = torch.Generator().manual_seed(self.args.seed + self.accelerator.process_index)
        while True:  # one shuffled pass over the texts per epoch
            order = torch.randperm(len(dataset), generator=generator).tolist()
            for start in range(0, len(dataset) - size + 1, size):
                yield [dataset[i]["text"] for i in order[start : start + size]]

    # ------------------------------------------------------------------------------------------------ rollout
    def _advantages(self, batch: ScoredBatch, rewards: torch.Tensor) -> Advantages:
        """Per-token rewards (the scaled score at the last completion token, minus β·KL_t) → the estimator, with
        the critic's V_old → whitening and clipping over the global batch."""
        output, mode, local = batch.output, batch.mode, batch.local
        mask, completion_mask = loss_mask(output), output["completion_mask"].float()
        reduce_sum = self.collective.reduce_sum
        scores = self._scaled_scores(rewards, local, mode)[local]
        logps = output.get("old_per_token_logps")
        if logps is None:  # π_old is the current policy here; the loss would use the same values
            logps = self._policy_logps(output)
        output = {**output, "old_per_token_logps": logps}
        metrics = {"policy/perplexity": self._perplexity(logps, mask)}
        if output.get("ref_per_token_logps") is not None:
            metrics["policy/ref_perplexity"] = self._perplexity(output["ref_per_token_logps"], mask)
        token_rewards = last_token_rewards(scores, completion_mask)
        if self.kl_penalty.placement == "reward" and self.kl_penalty.controller.beta != 0.0:
            token_rewards = token_rewards - self.kl_penalty.controller.beta * self._reward_placed_kl(output, mask, mode)

        values = self._rollout_values(output) if self.critic is not None else None
        estimator = self.components.advantages
        advantages, returns = call_plugin(
            self.zrl_pm, estimator, "token_advantages", token_rewards, values, completion_mask
        )
        check_token_advantages(estimator.name, token_rewards.shape, advantages, returns)
        columns = {"old_per_token_logps": logps}
        if values is not None:
            columns.update(old_values=values, returns=returns)
            metrics.update(critic_metrics(values, returns, mask, reduce_sum))
        whiten, clip = self.args.whiten_advantages, self.args.advantage_clip
        advantages = whitened_and_clipped(advantages, mask, whiten, clip, reduce_sum) * mask
        metrics["reward/scaled_mean"] = self.accelerator.gather(scores).float().mean().item()
        self._log_metrics(mode, metrics)
        sequence_advantage = (advantages.sum(-1) / mask.sum(-1).clamp(min=1)).detach()
        logged = self.accelerator.gather(sequence_advantage)
        return Advantages(local=advantages, logged=logged, rewards=rewards, columns=columns)

    def _scaled_scores(self, rewards: torch.Tensor, local: slice, mode: str) -> torch.Tensor:
        """PPO-max: running reward scaling (Welford over processes and steps) then clipping. NaN (unscorable) → 0."""
        scores = rewards.clone()
        if mode == "train" and self.args.reward_scaling != "none":
            self.reward_moments.update(scores[local], gather=self.accelerator.gather)
            self._metrics[mode]["reward/running_std"].append(self.reward_moments.std)
        scores = torch.nan_to_num(scores, nan=0.0)
        if self.args.reward_scaling != "none" and self.reward_moments.count > 1 and self.reward_moments.std > 0:
            if self.args.reward_scaling == "mean_std":
                scores = scores - self.reward_moments.mean
            scores = scores / self.reward_moments.std
        if self.args.reward_clip is not None:
            scores = scores.clamp(-self.args.reward_clip, self.args.reward_clip)
        return scores

    def _rollout_values(self, output: dict[str, Any]) -> torch.Tensor:
        """V_old of this process's completion tokens (no gradient), in chunks of the per-device batch size."""
        input_ids, attention_mask = sequences(output)
        length = output["completion_ids"].size(1)
        size = self.args.per_device_train_batch_size
        chunks = []
        with torch.no_grad(), self.accelerator.autocast():
            for i in range(0, len(input_ids), size):
                ids, mask = input_ids[i : i + size], attention_mask[i : i + size]
                layout, model_inputs = (lambda x: x), {"input_ids": ids, "attention_mask": mask}
                if self.padding_free is not None:  # the same packed (or trimmed) rows as the training pass
                    rows = self.padding_free.layout(ids, mask, length)
                    layout, model_inputs = rows.unpack, {"attention_mask": None, **rows.model_inputs()}
                if self.shared_critic:
                    hidden = decoder_of(self.model)(**model_inputs, use_cache=False)
                    values = self.critic(hidden.last_hidden_state)
                else:
                    values = critic_values(self.critic, **model_inputs)
                chunks.append(completion_slice(layout(values), length))
        return torch.cat(chunks) * output["completion_mask"]

    def _perplexity(self, logps: torch.Tensor, mask: torch.Tensor) -> float:
        return float(torch.exp(torch.tensor(-self.collective.masked_mean(logps.detach(), mask))))

    # ------------------------------------------------------------------------------------------------ loss
    def _loss_from_forward(
        self, forward: CompletionForward, inputs: dict[str, Any], mode: str, record: bool = True
    ) -> torch.Tensor:
        """Policy objective + vf_coef · value loss (+ ptx_coef · pretraining loss, once per micro-batch: with the
        last token-budget part)."""
        loss = self._policy_objective(forward, inputs, mode, record)
        if forward.values is not None:
            loss = loss + self.args.vf_coef * self._value_loss(forward.values, inputs, mode, record)
        if self._ptx_batches is not None and mode == "train" and record:
            loss = loss + self.args.ptx_coef * self._pretrain_loss()
        if mode == "train" and record:
            step = self.state.global_step + 1
            note_nonfinite_loss(loss, self._nonfinite, self.is_deepspeed_enabled, self.collective.any_process, step)
        return loss

    def _forward_completions(self, model, inputs) -> CompletionForward:
        """The policy's forward pass, plus V(s_t) from the critic on the same tokens, computed inside that pass (a
        shared head reads the decoder's hidden states of that very pass, so the backbone runs once)."""
        if self.critic is None:
            return super()._forward_completions(model, inputs)
        length = inputs["completion_ids"].size(1)
        if self.padding_free is not None:  # its one-time check runs the model: before the values are collected
            self.padding_free.verify(model, *sequences(inputs), length)
        with values_in_forward(self.model) as values:
            forward = super()._forward_completions(model, inputs)
        return dataclasses.replace(forward, values=completion_slice(forward.sequence_layout(values), length))

    def _value_loss(self, values: torch.Tensor, inputs: dict[str, Any], mode: str, record: bool = True) -> torch.Tensor:
        """½·max((V − R)², (clip(V, V_old ± c) − R)²), token mean over the generation batch (docs/methods.md)."""
        mask = loss_mask(inputs)
        clip = self.args.cliprange_value
        per_token, clipped = clipped_value_loss(values, inputs["old_values"], inputs["returns"], clip)
        loss = token_mean_aggregate(per_token, mask, self._loss_context(inputs, mode))
        if record:
            clip_fraction = self.collective.masked_mean(clipped.float(), mask)
            self._metrics[mode]["critic/value_clip_fraction"].append(clip_fraction)
            self._metrics[mode]["critic/value_loss"].append(self.collective.masked_mean(per_token.detach(), mask))
        return loss

    def _pretrain_loss(self) -> torch.Tensor:
        """Language-modelling loss on a batch of pretraining texts. It runs the policy itself, not its DDP wrapper:
        DDP allows one forward per backward (the policy's own pass already ran), while the gradients of both passes
        still meet in the parameters before DDP reduces them; sharded engines gather through their module hooks."""
        texts = next(self._ptx_batches)
        limit = getattr(self.model.config, "max_position_embeddings", None) or 2048
        batch = self.processing_class(
            text=texts, return_tensors="pt", padding=True, truncation=True, max_length=limit
        ).to(self.accelerator.device)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        with self.accelerator.autocast():
            lm_loss = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
        lm_loss = lm_loss.loss
        self._metrics["train"]["ptx_loss"].append(self.accelerator.gather(lm_loss.detach()).mean().item())
        return lm_loss / self.current_gradient_accumulation_steps

    # ------------------------------------------------------------------------------------------------ checkpoints
    def _stateful_components(self) -> dict[str, Any]:
        return {**super()._stateful_components(), "reward_moments": self.reward_moments}

    def _save(self, output_dir: str | None = None, state_dict: dict[str, Any] | None = None) -> None:
        """Every weight save (checkpoints, ``save_model``, DeepSpeed's consolidated 16-bit weights): the policy as
        a plain model in ``output_dir`` and the critic in ``output_dir/critic`` (a token-classification model
        loadable on its own, e.g. as a reward model, or the shared value head's tensors)."""
        if self.critic is None:
            return super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if state_dict is None:
            state_dict = self.model.state_dict()
        policy_state, critic_state = split_state_dict(state_dict)
        with detached_value_model(self.model):
            super()._save(output_dir, state_dict=policy_state)
        if self.args.should_save and critic_state:
            self._save_critic(os.path.join(output_dir, CRITIC_DIR), critic_state)

    def _save_critic(self, directory: str, state_dict: dict[str, Any]) -> None:
        if callable(getattr(self.critic, "save_pretrained", None)):
            self.critic.save_pretrained(directory, state_dict=state_dict)
            return
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state_dict.items()}, f"{directory}/model.safetensors")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        """Non-sharded runs load the policy's weights, then the critic's from ``critic/``. Under DeepSpeed and FSDP
        the engine's own checkpoint holds both (and the Trainer loads it through the engine)."""
        target = self.model if model is None else model
        if self.critic is None or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, CRITIC_DIR, "model.safetensors")
        if not os.path.exists(path):
            raise ConfigError(f"{resume_from_checkpoint} holds no critic ({path}); it was not written by ZRLPPOTrainer")
        from safetensors.torch import load_file

        with detached_value_model(target) as critic:
            super()._load_from_checkpoint(resume_from_checkpoint, target)
        critic.load_state_dict(load_file(path, device=str(next(critic.parameters()).device)))

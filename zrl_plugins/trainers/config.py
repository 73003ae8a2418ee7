"""``ZRLConfig``: TRL's ``GRPOConfig`` plus the names (and keyword arguments) of the components to use.

Every field carries ``metadata={"help": ...}`` so ``trl.TrlParser`` turns it into a CLI flag and a YAML key; the
``*_kwargs`` fields accept a JSON object on the command line, e.g.
``--normalizer dr_grpo --normalizer_kwargs '{"max_length": 1024}'``.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from trl import GRPOConfig

from ..framework.errors import ConfigError

KWARGS_FIELDS = (
    "verifier_kwargs",
    "normalizer_kwargs",
    "policy_loss_kwargs",
    "kl_penalty_kwargs",
    "rollout_kwargs",
    "rollout_correction_kwargs",
)


def _parse_kwargs(name: str, value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{name} must be a JSON object, e.g. '{{\"delta\": 1e-6}}'; could not parse {value!r}: {exc}"
            ) from exc
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a mapping of keyword arguments, got {type(value).__name__}: {value!r}")
    return dict(value)


@dataclass
class ZRLConfig(GRPOConfig):
    """Configuration of :class:`zrl_plugins.ZRLGRPOTrainer`.

    Adds to ``GRPOConfig`` the components selected by name. TRL's ``loss_type``, ``scale_rewards`` and
    ``importance_sampling_level`` keep their meaning: they are translated into the ``normalizer`` (advantage formula
    and aggregation) and the ``policy_loss`` (:mod:`zrl_plugins.trainers.trl_options`); ``kl_penalty`` decides the KL
    estimator and placement, with ``beta`` as its initial coefficient.
    """

    _per_token_advantages: ClassVar[bool] = False  # PPO: advantages from a per-token estimator, not TRL's options

    verifiers: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Names of the reward verifiers to use (see `zrl plugins`). Their rewards are summed, weighted by "
            "`reward_weights` (verifiers first, then any `reward_funcs` passed to the trainer directly)."
        },
    )
    verifier_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments per verifier, as a mapping from verifier name to kwargs (JSON on the CLI), e.g. "
            '\'{"math_correct": {"mode": "format_aware"}}\'.'
        },
    )
    verifier_timeout: float | None = field(
        default=300.0,
        metadata={
            "help": "Seconds a verifier call may take; after that its rows get reward None (not scored), the count is "
            "logged as verifier/<name>/timeouts and training goes on. None: no limit."
        },
    )
    verifier_isolation: str = field(
        default="thread",
        metadata={
            "help": "Where verifier calls run: `thread` (a thread stopped at the deadline; a call stuck in C code "
            "keeps running) or `process` (a worker process per verifier, killed at the deadline and restarted, so a "
            "hang anywhere frees its resources; the verifier must pickle or be an installed component)."
        },
    )
    verifier_max_consecutive_timeouts: int | None = field(
        default=3,
        metadata={
            "help": "Calls of one verifier in a row that time out (every row unscored) after which training stops "
            "with an error naming the verifier, instead of training without its rewards. None: never stop."
        },
    )
    normalizer: str | None = field(
        default=None,
        metadata={
            "help": "Advantage normalizer and loss aggregation, by name (e.g. grpo, dr_grpo, lite_ppo; any "
            "takes `aggregation` in normalizer_kwargs). Unset: from TRL's scale_rewards / loss_type (their "
            "defaults included: group + dapo)."
        },
    )
    normalizer_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Keyword arguments of the normalizer (JSON object on the CLI)."}
    )
    policy_loss: str | None = field(
        default=None,
        metadata={
            "help": "Per-token policy loss by name (clip; cispo, sapo, luspo, vespo from zrl-losses). Unset: "
            "from TRL's loss_type (clip for the grpo family)."
        },
    )
    policy_loss_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Keyword arguments of the policy loss (JSON object on the CLI)."}
    )
    loss_type: str | None = field(
        default=None,
        metadata={
            "help": "TRL's loss type (grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo, vespo), translated into "
            "the policy loss and the normalizer's aggregation (zrl_plugins/trainers/trl_options.py). Unset: "
            "TRL's default `dapo`, unless `normalizer` is chosen (then its own aggregation)."
        },
    )
    scale_rewards: str | None = field(
        default=None,
        metadata={
            "help": "TRL's advantage scaling (group, batch, none), translated into the normalizer grpo, "
            "lite_ppo or dr_grpo. Unset: TRL's default `group`, unless `normalizer` is chosen."
        },
    )
    importance_sampling_level: str | None = field(
        default=None,
        metadata={
            "help": "TRL's importance ratio level: `token`, or `sequence` (GSPO); passed to the policy loss. "
            "Unset: `token` (TRL's default) for losses chosen through TRL's options."
        },
    )
    kl_penalty: str = field(
        default="k3",
        metadata={
            "help": "KL penalty by name (k3, none, ...). `beta` is its initial coefficient; `none` loads no "
            "reference model."
        },
    )
    kl_penalty_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Keyword arguments of the KL penalty (JSON object on the CLI)."}
    )
    truncated_reward: float | None = field(
        default=None,
        metadata={
            "help": "Reward given to a completion that hit max_completion_length without EOS, replacing what the "
            "verifiers said (Dr. GRPO uses 0). None keeps the verifiers' rewards. Verifiers also receive the column "
            "`completion_truncated` to apply rules of their own."
        },
    )
    rollout: str = field(
        default="default",
        metadata={"help": "Rollout strategy by name (default = TRL's own generation, incl. its vLLM modes)."},
    )
    rollout_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Keyword arguments of the rollout strategy (JSON object on the CLI)."}
    )
    rollout_correction: str | None = field(
        default=None,
        metadata={
            "help": "Rollout correction by name (none, token_truncate, token_mask, sequence_truncate, sequence_mask, "
            "token_tis, seq_tis; icepop, geo_mask, batch_norm_is from zrl-corrections): weights and rejection masks "
            "for the gap between the behaviour policy (vLLM, nested) and pi_old. Unset: from TRL's "
            "vllm_importance_sampling_* options with vLLM, token_tis for an off-policy rollout, else none."
        },
    )
    rollout_correction_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Keyword arguments of the rollout correction (JSON object on the CLI)."}
    )
    vllm_importance_sampling_correction: bool | None = field(
        default=None,
        metadata={
            "help": "TRL's option, translated into rollout_correction (False: `none`). Unset: TRL's default (on, "
            "with vLLM)."
        },
    )
    vllm_importance_sampling_mode: str | None = field(
        default=None,
        metadata={
            "help": "TRL's option (token_truncate, token_mask, sequence_truncate, sequence_mask), translated into the "
            "rollout_correction of that name. Unset: TRL's default `sequence_mask`, with vLLM."
        },
    )

    vllm_enforce_eager: bool | None = field(
        default=None,
        metadata={
            "help": "Build TRL's colocated vLLM engine with `enforce_eager` (no CUDA graphs / torch.compile). None = "
            "True where vLLM runs on CPU (compiling there costs about a minute at every start) and False on GPUs."
        },
    )

    async_rollouts: bool = field(
        default=False,
        metadata={
            "help": "Generate on a separate vLLM server (`vllm serve`) ahead of training, each batch at most "
            "`max_staleness` policy versions behind the step that trains on it (docs/async.md). Needs use_vllm; "
            "generation is then in server mode whatever vllm_mode says."
        },
    )
    max_staleness: int = field(
        default=1,
        metadata={
            "help": "With async_rollouts: how many optimizer steps older than the step that trains on them the "
            "weights that generated a batch may be. 0 reproduces the synchronous run step for step."
        },
    )
    weight_sync_steps: int = field(
        default=1,
        metadata={
            "help": "With async_rollouts: send the weights to the server after every this many optimizer steps; at "
            "most max_staleness + 1 (else no version would be recent enough for some steps)."
        },
    )
    vllm_server_launch: bool | None = field(
        default=None,
        metadata={
            "help": "For async_rollouts (and server mode on vLLM's CPU build): start `vllm serve` as a child of the "
            "trainer on a free loopback port (it exits with the trainer, also when the trainer is killed) instead of "
            "connecting to vllm_server_base_url / vllm_server_host:vllm_server_port. Unset: start one unless "
            "vllm_server_base_url is set."
        },
    )
    vllm_server_cpus: str | None = field(
        default=None,
        metadata={
            "help": "On vLLM's CPU build, the cores a launched server runs on, e.g. '0' or '0-3' (the affinity of "
            "all its processes, and VLLM_CPU_OMP_THREADS_BIND); unset: vLLM's choice."
        },
    )
    vllm_request_timeout: float = field(
        default=600.0,
        metadata={
            "help": "Seconds one request to the vLLM server (a batch of generations, a weight update) may take; a "
            "server that does not answer in time stops training with a message naming it."
        },
    )
    vllm_weight_transfer: str = field(
        default="auto",
        metadata={
            "help": "How weights reach the vLLM server in server generation: `zrl_shm` (a shared-memory file, any "
            "machine; the only one on vLLM's CPU build), `nccl` (vLLM's NCCL engine, GPUs), or `auto` (zrl_shm "
            "where vLLM is a CPU build, else nccl)."
        },
    )

    padding_free: bool = field(
        default=False,
        metadata={
            "help": "Training and scoring forward passes on packed rows: the micro-batch's prompt + completion "
            "tokens laid end to end without pad tokens, position_ids restarting per sequence (transformers builds the "
            "block-diagonal mask; flash-attention takes the boundaries). Per-token log-probs, entropies and critic "
            "values come back in the padded layout, so every component is unchanged. Checked once per model against "
            "an unpacked pass; refused for multimodal inputs, MoE router aux losses and unknown attention backends."
        },
    )
    max_tokens_per_microbatch: int | None = field(
        default=None,
        metadata={
            "help": "Token budget of one forward + backward: each micro-batch of per_device_train_batch_size "
            "sequences is split into balanced parts of at most this many real tokens (a longer sequence gets a part "
            "of its own, with one warning), the same number of parts on every process, with a backward per part. The "
            "optimizer step keeps exactly the gradient of the unsplit micro-batch for every loss_type and normalizer. "
            "None: no split."
        },
    )
    nonfinite_policy: str = field(
        default="skip",
        metadata={
            "help": "A step whose loss or gradient norm is not finite: `skip` it on every process (no weight, "
            "optimizer-state or scheduler change; counted as train/skipped_steps; the run stops after "
            "`max_consecutive_skips` in a row), or `raise` at once. DeepSpeed steps inside its backward, so "
            "there a non-finite step always stops the run."
        },
    )
    max_consecutive_skips: int = field(
        default=3, metadata={"help": "Non-finite steps in a row after which training stops with a numerics error."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "A run that does not resume, in an output_dir holding another run's checkpoints: delete them "
            "and start over. Without it such a run is refused (resume it with resume_from_checkpoint=True, or use "
            "another output_dir)."
        },
    )
    resume_override: bool = field(
        default=False,
        metadata={
            "help": "Resume a checkpoint trained with other components, kwargs or beta: this run's "
            "setup wins where it differs (replaced components start from their initial state, a new beta replaces "
            "the checkpoint's) and the log lists the changes. Also lets a checkpoint whose zrl state is unreadable "
            "resume its weights with zrl's components from their initial state."
        },
    )

    def __post_init__(self) -> None:
        from .numerics import POLICIES

        if self.nonfinite_policy not in POLICIES:
            raise ConfigError(f"nonfinite_policy must be one of {POLICIES}, got {self.nonfinite_policy!r}")
        if self.verifier_max_consecutive_timeouts is not None and self.verifier_max_consecutive_timeouts < 1:
            raise ConfigError(
                f"verifier_max_consecutive_timeouts must be >= 1 or None, got {self.verifier_max_consecutive_timeouts}"
            )
        if self.max_consecutive_skips < 1:
            raise ConfigError(f"max_consecutive_skips must be >= 1, got {self.max_consecutive_skips}")
        self._check_numbers()
        if self.verifier_isolation not in ("thread", "process"):
            raise ConfigError(f"verifier_isolation must be 'thread' or 'process', got {self.verifier_isolation!r}")
        if isinstance(self.verifiers, str):  # `verifiers: last_number` in YAML, or one name from Python
            self.verifiers = [name.strip() for name in self.verifiers.split(",") if name.strip()]
        self._check_server_generation()
        for name in KWARGS_FIELDS:
            setattr(self, name, _parse_kwargs(name, getattr(self, name)))
        from .correction_options import resolve_rollout_correction
        from .trl_options import resolve

        resolve(self, per_token_advantages=self._per_token_advantages)
        resolve_rollout_correction(self)
        for verifier, kwargs in self.verifier_kwargs.items():
            if not isinstance(kwargs, dict):
                raise ValueError(
                    f"verifier_kwargs[{verifier!r}] must be a mapping of keyword arguments, got {kwargs!r}"
                )
        unused = sorted(set(self.verifier_kwargs) - set(self.verifiers))
        if unused:
            raise ValueError(
                f"verifier_kwargs names verifiers that are not selected in `verifiers`: {unused}; "
                f"selected verifiers: {self.verifiers}"
            )
        super().__post_init__()

    def _check_numbers(self) -> None:
        """Values that would fail (or train the opposite of what was meant) only after the model loads."""
        if not (isinstance(self.beta, int | float) and math.isfinite(self.beta) and self.beta >= 0):
            raise ConfigError(
                f"beta must be a finite number >= 0, got {self.beta}: a negative beta turns the KL penalty into a "
                "bonus for moving away from the reference. Use beta=0 (or kl_penalty='none') for no KL term."
            )
        if not (isinstance(self.temperature, int | float) and math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(
                f"temperature must be > 0, got {self.temperature}: log-probs are computed from logits / temperature. "
                "For greedy decoding in evaluation use the evaluation's own settings; training samples."
            )
        if not (math.isfinite(self.learning_rate) and self.learning_rate >= 0):
            raise ConfigError(f"learning_rate must be a finite number >= 0, got {self.learning_rate}")

    def _check_server_generation(self) -> None:
        if self.max_staleness < 0:
            raise ConfigError(f"max_staleness must be >= 0, got {self.max_staleness}")
        if not 1 <= self.weight_sync_steps <= self.max_staleness + 1:
            raise ConfigError(
                f"weight_sync_steps must be between 1 and max_staleness + 1 = {self.max_staleness + 1}, got "
                f"{self.weight_sync_steps}: a batch trained at step s needs weights of step s - max_staleness or newer"
            )
        if self.vllm_weight_transfer not in ("auto", "zrl_shm", "nccl"):
            raise ConfigError(
                f"vllm_weight_transfer must be 'auto', 'zrl_shm' or 'nccl', got {self.vllm_weight_transfer!r}"
            )
        if self.max_tokens_per_microbatch is not None and self.max_tokens_per_microbatch < 1:
            raise ConfigError(
                f"max_tokens_per_microbatch must be a positive number of tokens or None, got "
                f"{self.max_tokens_per_microbatch}"
            )
        if self.vllm_request_timeout <= 0:
            raise ConfigError(f"vllm_request_timeout must be > 0 seconds, got {self.vllm_request_timeout}")
        if not self.async_rollouts:
            return
        if not self.use_vllm:
            raise ConfigError(
                "async_rollouts generates on a vLLM server: set use_vllm=True (and vllm_server_launch=True to let "
                "zrl start the server, or point vllm_server_base_url at a running `vllm serve`)"
            )
        self.vllm_mode = "server"  # generating ahead needs a server of its own: colocated vLLM shares the devices


def parse_config(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """``TrlParser(dataclass_types).parse_args_and_config(argv)`` (YAML via ``--config`` plus CLI overrides), with
    errors a user can act on: malformed YAML names the file and line; an unknown key gets a close-match suggestion.
    """
    import yaml
    from trl import TrlParser

    parser = TrlParser(list(dataclass_types))
    try:
        return tuple(parser.parse_args_and_config(list(argv) if argv is not None else None))
    except yaml.YAMLError as exc:
        raise ConfigError(f"the config file is not valid YAML: {exc}") from exc
    except ValueError as exc:
        message = str(exc)
        if "Unknown arguments" not in message and "not used by the HfArgumentParser" not in message:
            raise
        known = sorted({f.name for dataclass_type in dataclass_types for f in fields(dataclass_type)})
        hints = []
        for key in re.findall(r"'--([\w.-]+)'", message):
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(
            f"unknown config keys: {', '.join(hints)}. Every key must be a field of "
            f"{' / '.join(t.__name__ for t in dataclass_types)} (see `--help`)."
        ) from exc

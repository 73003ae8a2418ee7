"""Setting up server generation for a trainer: which runs use it (and what they cannot do), the server (started by
zrl or given), the weight sender, the stream, and the overrides' state (:mod:`.server_rollouts`)."""

from __future__ import annotations

import collections
import logging
from typing import Any

from ..framework.errors import ConfigError
from ..serving.client import SamplingOptions, ServerClient
from ..serving.launcher import ServerSettings, launch
from ..serving.stream import RolloutStream
from ..serving.weights import NCCLSender, SharedMemorySender
from .server_rollouts import Lookahead, ServerGeneration, WeightPublisher

logger = logging.getLogger(__name__)


def check_server_generation(args: Any, on_cpu: bool, components: Any, kwargs: dict[str, Any]) -> bool:
    """Whether the trainer generates on a ``vllm serve`` process through zrl (``async_rollouts``, or TRL's server
    mode where vLLM is a CPU build and TRL's NCCL weight sync cannot work); refuses, before anything loads, what
    that generation cannot serve."""
    if not (args.use_vllm and (args.async_rollouts or (args.vllm_mode == "server" and on_cpu))):
        return False
    what = "async_rollouts" if args.async_rollouts else "vllm_mode='server' on vLLM's CPU build"
    if components.rollout.component.replaces_generation or kwargs.get("rollout_func") is not None:
        raise ConfigError(
            f"{what} generates with the server from the trainer's weights; rollout {components.rollout.name!r} (or a "
            "rollout_func) generates itself. Use rollout 'default' or 'dynamic_sampling' with it, or turn it off."
        )
    for option in ("tools", "environment_factory"):
        if kwargs.get(option):
            raise ConfigError(f"{what} generates single turns: {option} (multi-turn tool loops) is not supported")
    return True


def install(trainer: Any, args: Any, model: Any) -> None:
    """Give ``trainer`` a :class:`ServerGeneration` (called at the end of the trainer's construction)."""
    server = None
    accelerator = trainer.accelerator
    if args.vllm_server_launch or (args.vllm_server_launch is None and args.vllm_server_base_url is None):
        # one server for the run: the main process starts it, the others are told its URL
        url = [None]
        if accelerator.is_main_process:
            server = launch(server_settings(trainer, args, model), args.vllm_server_timeout, args.vllm_request_timeout)
            url = [server.client.base_url]
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(url, from_process=0)
        client = server.client if server is not None else ServerClient(url[0], args.vllm_request_timeout)
    else:
        url = args.vllm_server_base_url or f"http://{_loopback(args.vllm_server_host)}:{args.vllm_server_port}"
        client = ServerClient(url, args.vllm_request_timeout)
        client.wait_until_ready(args.vllm_server_timeout)
    _check_logprobs_mode(client)
    sender = None
    if accelerator.is_main_process:
        sender = NCCLSender(client) if weight_transfer(args) == "nccl" else SharedMemorySender(client)
    options = SamplingOptions(
        max_tokens=trainer.max_completion_length,
        temperature=trainer.temperature,
        top_p=trainer.top_p,
        top_k=trainer.top_k or 0,
        min_p=trainer.min_p or 0.0,
        repetition_penalty=trainer.repetition_penalty,
        extra=tuple(sorted((args.generation_kwargs or {}).items())),
    )
    alive = server.running if server is not None else None
    staleness = args.max_staleness if args.async_rollouts else 0
    stream = RolloutStream(client, sender, options, staleness, args.seed, accelerator.process_index, server_alive=alive)
    generation = ServerGeneration(trainer, stream, ahead=args.async_rollouts, server=server)
    trainer.use_vllm, trainer.vllm_mode, trainer._last_loaded_step = True, "server", -1
    trainer.vllm_generation = generation
    trainer._planned_slots = collections.Counter()
    if args.async_rollouts:
        generate_every = args.steps_per_generation * trainer.num_iterations
        trainer.rollout_lookahead = Lookahead(args.max_staleness, args.gradient_accumulation_steps, generate_every)
        trainer.add_callback(WeightPublisher(generation, args.weight_sync_steps))


def weight_transfer(args: Any) -> str:
    if args.vllm_weight_transfer != "auto":
        return args.vllm_weight_transfer
    from .vllm_cpu import vllm_runs_on_cpu

    return "zrl_shm" if vllm_runs_on_cpu() else "nccl"


def server_settings(trainer: Any, args: Any, model: Any) -> ServerSettings:
    """What ``vllm serve`` is started with: the model the trainer was given (saved first when it was an object;
    the weights sent at the start of training replace it anyway)."""
    if not isinstance(model, str):
        import tempfile

        path = tempfile.mkdtemp(prefix="zrl-served-model-")
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
        base.save_pretrained(path)
        trainer.processing_class.save_pretrained(path)
        model = path
    from .vllm_cpu import vllm_runs_on_cpu

    on_cpu = vllm_runs_on_cpu()
    eager = on_cpu if args.vllm_enforce_eager is None else args.vllm_enforce_eager
    return ServerSettings(
        model=model,
        max_model_len=args.vllm_max_model_length,
        seed=args.seed,
        enforce_eager=eager,
        max_num_seqs=max(args.per_device_train_batch_size * args.steps_per_generation, 8),
        cpus=args.vllm_server_cpus if on_cpu else None,
        gpu_memory_utilization=None if on_cpu else args.vllm_gpu_memory_utilization,
    )


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", None) else host


def _check_logprobs_mode(client: ServerClient) -> None:
    try:
        mode = client.server_info()["vllm_config"]["model_config"]["logprobs_mode"]
    except Exception:
        return
    if mode != "processed_logprobs":
        logger.warning(
            "the vLLM server at %s reports log-probs as %s: the rollout correction then compares the trainer with "
            "another distribution than the one sampled from. Start it with --logprobs-mode processed_logprobs.",
            client.base_url,
            mode,
        )

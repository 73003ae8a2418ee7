"""Generation on a separate vLLM server (``vllm serve``), synchronous or ahead of training.

``client`` speaks the server's HTTP API (generation, the RL weight-update endpoints) with a deadline on every call;
``launcher`` starts a server as a child that exits with the trainer; ``weights`` moves the trainer's weights to it
(zrl's shared-memory engine on any machine, vLLM's NCCL engine between GPUs); ``vllm_engine`` is the server side of
the shared-memory engine, registered into vLLM through its ``vllm.general_plugins`` entry point; ``stream`` generates
batches ahead of the trainer within a staleness bound. docs/async.md draws who runs where.
"""

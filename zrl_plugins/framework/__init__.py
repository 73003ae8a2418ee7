"""The plugin framework: hook specifications, the plugin manager, component protocols, errors, the tensor helpers
shared by components (``ops``), the rollout batch value (``scored_batch``) and the verifier guard. Plugins use it
through :mod:`zrl_plugins.sdk`."""

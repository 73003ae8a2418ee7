"""The trainers: ``ZRLGRPOTrainer`` (:mod:`.grpo`), ``ZRLPPOTrainer`` (:mod:`.ppo`, critic in :mod:`.critic`),
their configs, TRL's options translated into components (:mod:`.trl_options`) and the skipped-step guard
(:mod:`.numerics`)."""

"""The installed distribution is found through its entry point and selected by name in a real training run."""

from __future__ import annotations

import importlib.metadata

from datasets import Dataset

from zrl_plugins import ZRLConfig, ZRLGRPOTrainer, get_plugin_manager


def test_entry_point_registers_both_verifiers():
    pm = get_plugin_manager()
    for name in ("math_correct", "boxed_format"):
        entry = pm.entry("verifier", name)
        assert entry.distribution == "zrl-math"
        assert entry.version == importlib.metadata.version("zrl-math")


def test_two_step_run_with_math_correct_by_name(tiny_model_path, tmp_path):
    rows = [{"prompt": f"What is {a} + {a}? Put it in \\boxed{{}}.", "answer": str(2 * a)} for a in range(8)]
    args = ZRLConfig(
        output_dir=str(tmp_path),
        verifiers=["math_correct", "boxed_format"],
        verifier_kwargs={"math_correct": {"num_workers": 2, "mode": "format_aware"}},
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        max_steps=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        gradient_checkpointing=False,
        kl_penalty="none",
    )
    trainer = ZRLGRPOTrainer(tiny_model_path, args=args, train_dataset=Dataset.from_list(rows))
    assert trainer.reward_func_names == ["math_correct", "boxed_format"]
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    # a random tiny model is never right: format_aware gives -1 (no number at all) or -0.5 (a wrong number)
    assert -1.0 <= logs[0]["rewards/math_correct/mean"] <= -0.5
    assert logs[0]["verifier/timeouts"] == 0.0 and logs[0]["verifier/unparsable_gold"] == 0.0
    trainer.reward_funcs[0].verifier.grader.close()

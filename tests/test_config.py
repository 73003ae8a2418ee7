"""ZRLConfig: fields become CLI flags and YAML keys through TrlParser; kwargs accept JSON."""

from __future__ import annotations

import pytest
from trl import TrlParser

from zrl_plugins import ZRLConfig

BASE = ["--output_dir", "/tmp/zrl-config-test", "--use_cpu", "--bf16", "false", "--report_to", "none"]


def test_cli_flags_select_components_and_parse_json_kwargs():
    parser = TrlParser(ZRLConfig)
    (config,) = parser.parse_args_and_config(
        [
            *BASE,
            "--verifiers", "last_number", "other",
            "--normalizer", "dr_grpo",
            "--normalizer_kwargs", '{"max_length": 1024}',
            "--kl_penalty", "none",
            "--verifier_kwargs", '{"last_number": {"tolerance": 0.5}}',
        ]
    )  # fmt: skip
    assert config.verifiers == ["last_number", "other"]
    assert config.normalizer == "dr_grpo" and config.normalizer_kwargs == {"max_length": 1024}
    assert config.kl_penalty == "none" and config.kl_penalty_kwargs == {}
    assert config.verifier_kwargs == {"last_number": {"tolerance": 0.5}}
    assert config.rollout == "default" and config.rollout_kwargs == {}


def test_yaml_config_and_cli_override(tmp_path):
    yaml_file = tmp_path / "recipe.yaml"
    yaml_file.write_text(
        "verifiers: [last_number]\nnormalizer: grpo\nnormalizer_kwargs:\n  delta: 0.001\nkl_penalty: k3\nbeta: 0.0001\n"
    )
    parser = TrlParser(ZRLConfig)
    (config,) = parser.parse_args_and_config([*BASE, "--config", str(yaml_file), "--normalizer", "lite_ppo"])
    assert config.verifiers == ["last_number"]
    assert config.normalizer == "lite_ppo"  # the one-flag ablation
    assert config.normalizer_kwargs == {"delta": 0.001}
    assert config.beta == pytest.approx(1e-4)


def test_help_text_for_every_zrl_field():
    from dataclasses import fields

    own = {f.name: f for f in fields(ZRLConfig)}
    for name in ("verifiers", "verifier_kwargs", "normalizer", "normalizer_kwargs", "kl_penalty",
                 "kl_penalty_kwargs", "rollout", "rollout_kwargs"):  # fmt: skip
        assert own[name].metadata.get("help"), name


def test_bad_json_kwargs_is_a_clear_error():
    with pytest.raises(ValueError, match="normalizer_kwargs must be a JSON object"):
        ZRLConfig(output_dir="/tmp/x", use_cpu=True, bf16=False, normalizer_kwargs="{delta: 1}")
    with pytest.raises(ValueError, match="must be a mapping of keyword arguments, got list"):
        ZRLConfig(output_dir="/tmp/x", use_cpu=True, bf16=False, kl_penalty_kwargs="[1, 2]")


def test_verifier_kwargs_for_an_unselected_verifier_is_an_error():
    with pytest.raises(ValueError, match=r"not selected in `verifiers`: \['math_correct'\]"):
        ZRLConfig(
            output_dir="/tmp/x", use_cpu=True, bf16=False, verifiers=["last_number"],
            verifier_kwargs={"math_correct": {"mode": "boxed"}},
        )  # fmt: skip

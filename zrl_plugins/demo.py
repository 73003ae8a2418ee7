"""``python -m zrl_plugins.demo``: the main job, :mod:`zrl_plugins.apps.demo`."""

from .apps.demo import main

if __name__ == "__main__":
    main()

"""ppo_max recipe (see the header of recipes/ppo_max.yaml for the method).

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/ppo_max.py --config recipes/ppo_max.yaml
    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/ppo_max.py --preset cpu-demo

Any config key can be overridden on the command line (e.g. ``--normalizer dr_grpo``); ``--help`` lists them.
"""

from zrl_plugins.apps.recipe import main

if __name__ == "__main__":
    main("ppo_max")

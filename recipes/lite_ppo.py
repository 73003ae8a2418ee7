"""lite_ppo recipe (see the header of recipes/lite_ppo.yaml for the method).

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/lite_ppo.py --config recipes/lite_ppo.yaml
    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/lite_ppo.py --preset cpu-demo

Any config key can be overridden on the command line (e.g. ``--normalizer dr_grpo``); ``--help`` lists them.
"""

from zrl_plugins.apps.recipe import main

if __name__ == "__main__":
    main("lite_ppo")

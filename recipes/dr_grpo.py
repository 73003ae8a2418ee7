"""dr_grpo recipe (see the header of recipes/dr_grpo.yaml for the method).

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/dr_grpo.py --config recipes/dr_grpo.yaml
    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/dr_grpo.py --preset cpu-demo

Any config key can be overridden on the command line (e.g. ``--normalizer dr_grpo``); ``--help`` lists them.
"""

from zrl_plugins.apps.recipe import main

if __name__ == "__main__":
    main("dr_grpo")

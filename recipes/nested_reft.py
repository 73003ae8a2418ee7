r"""nested_reft recipe (see the header of recipes/nested_reft.yaml for the method).

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/nested_reft.py \
        --config recipes/nested_reft.yaml
    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/nested_reft.py --preset cpu-demo

Any config key can be overridden on the command line (e.g. ``--normalizer dr_grpo``); ``--help`` lists them.
"""

from zrl_plugins.apps.recipe import main

if __name__ == "__main__":
    main("nested_reft")

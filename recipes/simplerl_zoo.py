r"""simplerl_zoo recipe (see the header of recipes/simplerl_zoo.yaml for the method).

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/simplerl_zoo.py \
        --config recipes/simplerl_zoo.yaml
    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/simplerl_zoo.py --preset cpu-demo

Any config key can be overridden on the command line (e.g. ``--normalizer dr_grpo``); ``--help`` lists them.
"""

from zrl_plugins.apps.recipe import main

if __name__ == "__main__":
    main("simplerl_zoo")

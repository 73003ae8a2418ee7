"""zrl-normalizers: dr_grpo, lite_ppo, batch, rloo and none, registered through zrl's hooks."""

from zrl_plugins.sdk import hookimpl

from .normalizers import RLOO, BatchNormalizer, DrGRPO, LitePPO, NoNormalization

__all__ = ["RLOO", "BatchNormalizer", "DrGRPO", "LitePPO", "NoNormalization"]


@hookimpl
def zrl_register_normalizers(register):
    register("dr_grpo", DrGRPO)
    register("lite_ppo", LitePPO)
    register("batch", BatchNormalizer)
    register("rloo", RLOO)
    register("none", NoNormalization)

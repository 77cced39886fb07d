"""OMoE (one gate over shared experts) and MMoE (a gate per task)."""

from mtlrec.layers import MixtureOfExperts, Tower
from mtlrec.models.registry import register


def _moe(x, config, num_gates):
    mix = MixtureOfExperts(
        config.num_experts, config.expert_units, num_gates=num_gates, dropout=config.dropout, name="experts"
    )(x)
    return {
        t: Tower(config.tower_units, config.dropout, name=f"{t}_tower")(mix[i % num_gates])
        for i, t in enumerate(config.tasks)
    }


@register("omoe")
def omoe(ctx):
    """One softmax gate shared by every task (MMoE paper's OMoE baseline)."""
    x, config = ctx.embed(), ctx.config
    return _moe(x, config, num_gates=1)


@register("mmoe")
def mmoe(ctx):
    """Ma et al., KDD 2018: one gate per task over shared experts."""
    x, config = ctx.embed(), ctx.config
    return _moe(x, config, num_gates=len(config.tasks))

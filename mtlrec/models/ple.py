"""CGC (one extraction level) and PLE (stacked levels)."""

from mtlrec.layers import CGCLayer, Tower
from mtlrec.models.registry import register


def extract(x, config, levels, prefix="cgc"):
    """Task representations after `levels` CGC levels (PLE when > 1).

    `x` is one tensor (the same input for every task and the shared part)
    or a list of T + 1 tensors (task inputs then the shared input).
    """
    n = len(config.tasks)
    h = list(x) if isinstance(x, (list, tuple)) else [x] * (n + 1)
    for level in range(levels):
        h = CGCLayer(
            n, config.num_task_experts, config.num_shared_experts, config.expert_units,
            is_last=level == levels - 1, dropout=config.dropout, name=f"{prefix}_{level}",
        )(h)
    return h


def towers(h, config):
    return {t: Tower(config.tower_units, config.dropout, name=f"{t}_tower")(h[i]) for i, t in enumerate(config.tasks)}


@register("cgc")
def cgc(ctx):
    """Tang et al., RecSys 2020, section 4.2: a single extraction level."""
    x, config = ctx.embed(), ctx.config
    return towers(extract(x, config, 1), config)


@register("ple")
def ple(ctx):
    """Tang et al., RecSys 2020, section 4.3: `num_levels` stacked levels."""
    x, config = ctx.embed(), ctx.config
    return towers(extract(x, config, config.num_levels), config)

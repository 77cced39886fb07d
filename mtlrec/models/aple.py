"""APLE = asymmetric multi-embedding + PLE + residual inter-task towers,
and the ablations between it and PLE."""

from mtlrec.layers.multi_embedding import AsymmetricMultiEmbedding, LowRankMultiEmbedding
from mtlrec.layers.residual import ResidualInterTaskBlock
from mtlrec.models.ple import extract, towers
from mtlrec.models.registry import register


def _ame(ctx, low_rank=False):
    c = ctx.config
    kw = dict(num_tasks=len(c.tasks), task_dims=c.ame_task_dims, shared_dim=c.ame_shared_dim, l2=c.embedding_l2)
    if low_rank:
        return LowRankMultiEmbedding(ctx.features, rank=c.ame_rank, name="ame", **kw)(ctx.inputs)
    return AsymmetricMultiEmbedding(ctx.features, name="ame", fused=ctx.fused_embedding_sets, **kw)(ctx.inputs)


def _residual_towers(h, config):
    probs = ResidualInterTaskBlock(len(config.tasks), config.tower_units, dropout=config.dropout, name="towers")(
        h[: len(config.tasks)]
    )
    return dict(zip(config.tasks, probs))


@register("aple")
def aple(ctx):
    """PLE fed by AME (task t's experts see task t's embedding set, shared
    experts the shared set), towers joined in funnel order by
    `ResidualInterTaskBlock` (APLE; docs/DESIGN.md)."""
    return _residual_towers(extract(_ame(ctx), ctx.config, ctx.config.num_levels), ctx.config)


@register("aple_lowrank")
def aple_lowrank(ctx):
    """APLE with `LowRankMultiEmbedding`: one shared table, rank-r task maps."""
    return _residual_towers(extract(_ame(ctx, low_rank=True), ctx.config, ctx.config.num_levels), ctx.config)


@register("ple_ame")
def ple_ame(ctx):
    """Ablation: PLE on AME, plain towers."""
    return towers(extract(_ame(ctx), ctx.config, ctx.config.num_levels), ctx.config)


@register("ple_residual")
def ple_residual(ctx):
    """Ablation: PLE on one embedding set, residual towers."""
    return _residual_towers(extract(ctx.embed(), ctx.config, ctx.config.num_levels), ctx.config)

"""Shared-Bottom: one MLP for all tasks, a tower per task."""

from mtlrec.layers import MLP, Tower
from mtlrec.models.registry import register


@register("shared_bottom")
def shared_bottom(ctx):
    """Caruana, "Multitask Learning", 1997: hard parameter sharing."""
    x, config = ctx.embed(), ctx.config
    h = MLP(config.bottom_units, dropout=config.dropout, name="bottom")(x)
    return {t: Tower(config.tower_units, config.dropout, name=f"{t}_tower")(h) for t in config.tasks}

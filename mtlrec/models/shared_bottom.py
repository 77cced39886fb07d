"""Shared-Bottom: one MLP for all tasks, a tower per task."""

from mtlrec.layers import MLP, Tower
from mtlrec.models.registry import register


@register("shared_bottom")
def shared_bottom(inputs, x, config):
    """Caruana, "Multitask Learning", 1997: hard parameter sharing."""
    h = MLP(config.bottom_units, dropout=config.dropout, name="bottom")(x)
    return {t: Tower(config.tower_units, config.dropout, name=f"{t}_tower")(h) for t in config.tasks}

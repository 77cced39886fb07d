"""DLEN's latent preference head on MMoE and PLE."""

from mtlrec.layers import MixtureOfExperts
from mtlrec.layers.dlen import LatentPreferenceHead
from mtlrec.models.ple import extract
from mtlrec.models.registry import register


def _head(task_inputs, x, config):
    n = len(config.tasks)
    out = LatentPreferenceHead(config.dlen_alpha, config.tower_units, config.dlen_hidden_units,
                               dropout=config.dropout, name="dlen")([*task_inputs, x])
    outputs = dict(zip(config.tasks, out[:n]))
    outputs.update({f"{t}_and_up": p for t, p in zip(config.tasks, out[n : 2 * n])})
    outputs["p_up"] = out[-1]
    return outputs


@register("mmoe_dlen")
def mmoe_dlen(ctx):
    """MMoE experts and gates; towers give P(t|UP) and P(t|~UP); a
    hidden-state network on the embeddings gives P(UP) (DLEN, figure 2)."""
    x, config = ctx.embed(), ctx.config
    mix = MixtureOfExperts(config.num_experts, config.expert_units, num_gates=len(config.tasks),
                           dropout=config.dropout, name="experts")(x)
    return _head(mix, x, config)


@register("ple_dlen")
def ple_dlen(ctx):
    """PLE extraction levels under the DLEN head."""
    x, config = ctx.embed(), ctx.config
    return _head(extract(x, config, config.num_levels)[: len(config.tasks)], x, config)

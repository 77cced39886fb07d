"""ESMM over a funnel of any length."""

from mtlrec.layers import FunnelProduct, Tower
from mtlrec.models.registry import register


@register("esmm")
def esmm(ctx):
    """Ma et al., SIGIR 2018, generalised to a chain of tasks.

    Tasks are in funnel order (click, like, ...). Tower k predicts the
    conditional p(task_k | task_1..k-1); the trained outputs are the joint
    probabilities over the entire exposure space, p(click, like) =
    p(click) * p(like | click), products of probabilities. The conditionals
    are auxiliary outputs named `<task>_conditional`.
    """
    return funnel(ctx.embed(), ctx.config)


def funnel(x, config) -> dict:
    """Conditional towers on `x`, their chained products, and the
    conditionals as `<task>_conditional` outputs."""
    conditionals = [Tower(config.tower_units, config.dropout, name=f"{t}_tower")(x) for t in config.tasks]
    joint = FunnelProduct(name="funnel")(conditionals)
    outputs = dict(zip(config.tasks, joint))
    for t, p in zip(config.tasks[1:], conditionals[1:]):
        outputs[f"{t}_conditional"] = p
    return outputs

"""Debiasing and transfer models: ESCM2 (IPS, DR), AITM, STEM."""

import keras

from mtlrec.layers import MLP, Tower
from mtlrec.layers.embedding import float32_layer
from mtlrec.layers.multi_embedding import AsymmetricMultiEmbedding
from mtlrec.layers.stem import STEMLayer
from mtlrec.layers.transfer import AdaptiveInformationTransfer
from mtlrec.models.esmm import esmm, funnel
from mtlrec.models.ple import towers
from mtlrec.models.registry import register


@register("escm2_ips")
def escm2_ips(ctx):
    """ESMM's funnel trained with ESCM2's IPS counterfactual risk
    (`mtlrec.training.losses.escm2_counterfactual`; Wang et al., SIGIR 2022)."""
    return esmm(ctx)


@register("escm2_dr")
def escm2_dr(ctx):
    """ESCM2-DR: the funnel plus, per step, an imputation head predicting
    the conditional tower's error (`<task>_imputed_error`, >= 0)."""
    x, config = ctx.embed(), ctx.config
    outputs = funnel(x, config)
    for t in config.tasks[1:]:
        h = MLP(config.tower_units, dropout=config.dropout, name=f"{t}_imputation_mlp")(x) if config.tower_units else x
        err = keras.layers.Dense(1, activation="softplus", dtype=float32_layer(), name=f"{t}_imputation")(h)
        outputs[f"{t}_imputed_error"] = keras.layers.Reshape((), name=f"{t}_imputed_error")(err)
    return outputs


@register("aitm")
def aitm(ctx):
    """AITM (Xi et al., KDD 2021): a tower per task; task t mixes its own
    representation with the one task t-1 passes on (`AdaptiveInformationTransfer`);
    trained with the behavioural expectation calibrator (`aitm_beta`)."""
    x, config = ctx.embed(), ctx.config
    width = config.expert_units[-1]
    outputs, previous = {}, None
    for t in config.tasks:
        q = MLP(config.expert_units, dropout=config.dropout, name=f"{t}_bottom")(x)
        z = q if previous is None else AdaptiveInformationTransfer(width, name=f"{t}_ait")([q, previous])
        outputs[t] = Tower(config.tower_units, config.dropout, name=f"{t}_tower")(z)
        previous = z
    return outputs


@register("stem")
def stem(ctx):
    """STEM (Su et al., AAAI 2024): a shared and a per-task embedding set
    (all `embedding_dim` wide) under `num_levels` STEM levels."""
    c = ctx.config
    xs = AsymmetricMultiEmbedding(ctx.features, len(c.tasks), task_dims=(c.embedding_dim,), shared_dim=c.embedding_dim,
                                  l2=c.embedding_l2, fused=ctx.fused_embedding_sets, name="embeddings")(ctx.inputs)
    h = list(xs)
    for level in range(c.num_levels):
        h = STEMLayer(len(c.tasks), max(1, c.num_task_experts), c.num_shared_experts, c.expert_units,
                      is_last=level == c.num_levels - 1, dropout=c.dropout, name=f"stem_{level}")(h)
    return towers(h, c)

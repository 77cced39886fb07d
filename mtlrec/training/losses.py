"""Model-specific loss terms on top of the per-task cross-entropy.

`model_loss(spec, y, y_pred, tasks)` adds, by `spec["kind"]`:
- `escm2_ips` / `escm2_dr`: ESCM2's counterfactual risk on each funnel
  step (Wang et al., "ESCM2", SIGIR 2022, section 4);
- `aitm`: AITM's behavioural expectation calibrator (Xi et al., KDD 2021,
  section 3.4).
All are means over the batch, in float32, with `tf.distribute` scaling left
to the trainer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf

EPS = 1e-7


def bce(labels, probs):
    """Element-wise binary cross-entropy on probabilities."""
    p = tf.clip_by_value(tf.cast(probs, tf.float32), EPS, 1 - EPS)
    y = tf.cast(labels, tf.float32)
    return -(y * tf.math.log(p) + (1 - y) * tf.math.log(1 - p))


def escm2_counterfactual(y, y_pred, tasks: Sequence[str], kind: str = "ips", clip: float = 0.05):
    """ESCM2's counterfactual regularizer, summed over funnel steps.

    For step t (task t conditioned on its parent t-1): the observed rows
    are those with the parent's label `o = y[t-1] = 1`; the propensity is
    the model's probability of reaching the parent, `p^ = p(t-1 joint)`,
    stop-gradiented and clipped below at `clip`; the error is
    `e = BCE(y_t, p(t | parent))` of the conditional (CVR-style) tower.

    IPS: `L = (1/|D|) sum_i o_i e_i / p^_i`.
    DR:  `L = (1/|D|) sum_i [e^_i + o_i (e_i - e^_i) / p^_i]` with `e^` the
         imputation head's predicted error (output `<task>_imputed_error`),
         plus the imputation loss `(1/|D|) sum_i o_i (e_i - e^_i)^2 / p^_i`;
         `e^` is stop-gradiented in the first term and `e` in the second,
         so each head minimises its own objective.

    Normalisation: by the batch size |D| (the exposure space), as in the
    ESCM2 paper's estimators, which are unbiased for the entire-space risk
    when the propensities are right. The self-normalised variant (dividing
    by sum o / p^) trades that bias for lower variance; it is not used.
    """
    total = 0.0
    for parent, task in zip(tasks[:-1], tasks[1:]):
        observed = tf.cast(y[parent], tf.float32)
        propensity = tf.maximum(tf.stop_gradient(tf.cast(y_pred[parent], tf.float32)), clip)
        error = bce(y[task], y_pred[f"{task}_conditional"])
        n = tf.cast(tf.size(error), tf.float32)
        if kind == "ips":
            total += tf.reduce_sum(observed * error / propensity) / n
        elif kind == "dr":
            imputed = tf.cast(y_pred[f"{task}_imputed_error"], tf.float32)
            dr = tf.stop_gradient(imputed) + observed * (error - tf.stop_gradient(imputed)) / propensity
            imputation = observed * tf.square(tf.stop_gradient(error) - imputed) / propensity
            total += tf.reduce_sum(dr) / n + tf.reduce_sum(imputation) / n
        else:
            raise ValueError(f"ESCM2 kind must be 'ips' or 'dr'. Received: {kind!r}")
    return total


def aitm_calibrator(y_pred, tasks: Sequence[str]):
    """`sum_t mean_batch(max(p_t - p_(t-1), 0))` over consecutive tasks: a
    later step of the funnel should not be more likely than an earlier one."""
    total = 0.0
    for parent, task in zip(tasks[:-1], tasks[1:]):
        gap = tf.cast(y_pred[task], tf.float32) - tf.cast(y_pred[parent], tf.float32)
        total += tf.reduce_mean(tf.nn.relu(gap))
    return total


def model_loss(spec: dict[str, Any] | None, y, y_pred, tasks: Sequence[str]):
    """The extra loss of a model (0 when `spec` is None)."""
    if not spec:
        return 0.0
    kind = spec["kind"]
    if kind in ("escm2_ips", "escm2_dr"):
        cf = escm2_counterfactual(y, y_pred, tasks, kind=kind.split("_")[1], clip=spec.get("clip", 0.05))
        return spec.get("lambda_cf", 0.1) * cf
    if kind == "aitm":
        return spec.get("beta", 0.6) * aitm_calibrator(y_pred, tasks)
    raise ValueError(f"Unknown model loss kind {kind!r}")


def loss_spec(model: str, config) -> dict[str, Any] | None:
    """The extra-loss settings a model trains with."""
    if model in ("escm2_ips", "escm2_dr"):
        return {"kind": model, "lambda_cf": config.escm2_lambda_cf, "clip": config.escm2_clip}
    if model == "aitm":
        return {"kind": "aitm", "beta": config.aitm_beta}
    return None

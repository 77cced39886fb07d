"""The training step: one optimizer step on the next global batch, the same
under the default strategy, MirroredStrategy and MultiWorkerMirroredStrategy.

Each replica computes its loss (already divided by the replicas) and
gradients; the optimizer sums the gradients over replicas (and workers)
before applying them. `gradnorm` and `pcgrad` need the global per-task
gradients: `balancing` assembles them (summed over the replicas first,
what each replica hands the optimizer divided by the replicas again).
`mtlrec.training.step_loop` runs many such steps in one call.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from mtlrec.layers.embedding import FeatureEmbedding
from mtlrec.layers.multi_embedding import AsymmetricMultiEmbedding, LowRankMultiEmbedding
from mtlrec.training import balancing, step_loop
from mtlrec.training.precision import LossScale
from mtlrec.training.trainer import MultiTaskTrainer


def make_gradients(trainer: MultiTaskTrainer, replicas: int, jit_compile: bool = False,
                   loss_scale: LossScale | None = None):
    """`gradients_of(features, labels, weights)`: one replica's loss, per-task
    losses, task weights, the rule's extra values and the gradients of
    `trainer.trainable_variables` (in that order), unscaled; nothing
    applied. `jit_compile` and `loss_scale`: see `make_replica_step`."""
    if jit_compile:
        return _jit_gradients(trainer, replicas, loss_scale)
    method = trainer.balancing.method

    def gradients_of(features, labels, weights):
        variables = trainer.trainable_variables
        with tf.GradientTape(persistent=trainer.balancing.per_task_gradients) as tape:
            predictions = trainer(features, training=True)
            losses = trainer.task_losses(labels, predictions, weights)
            if method == "gradnorm":  # w0_t L_t: the norms are taken before GradNorm's own weights
                plain = [trainer.w0[i] * losses[t] / replicas for i, t in enumerate(trainer.tasks)]
            if trainer.balancing.per_task_gradients:
                terms = [term / replicas for term in trainer.task_terms(losses)]
                common = trainer.common_loss(labels, predictions) / replicas
                total = tf.add_n(terms) + common
            else:
                total = trainer.total_loss(losses, labels, predictions)
            scaled = total * loss_scale.scale if loss_scale is not None else total
        effective = trainer.effective_weights()
        extra = {}
        if method == "pcgrad":
            gradients, extra["conflicts"] = balancing.pcgrad_gradients(
                tape, terms, common, variables, trainer.optimizer.iterations, replicas)
        else:
            gradients = tape.gradient(scaled, variables)
        if loss_scale is not None:
            gradients = loss_scale.unscale(gradients)
        if method == "gradnorm":
            extra["task_weights"], extra["initial_losses"] = balancing.gradnorm_step(
                tape, plain, gradients, variables, tf.stack([losses[t] for t in trainer.tasks]),
                tf.convert_to_tensor(trainer.task_weights), tf.convert_to_tensor(trainer.initial_losses),
                trainer.balancing, replicas)
        return total, losses, effective, extra, gradients

    return gradients_of


def make_replica_step(trainer: MultiTaskTrainer, replicas: int, frozen: Sequence = (), jit_compile: bool = False,
                      loss_scale: LossScale | None = None):
    """`replica_step(features, labels, weights)`: one replica's share of a
    step; applies the gradients and returns its loss, the per-task losses,
    the task weights of the step and the rule's extra values (`conflicts`
    of pcgrad; `task_weights` and `initial_losses` of gradnorm, to assign
    once reduced). `frozen`: variables the step leaves alone (frozen tasks'
    own parameters: neither they nor their optimizer slots change).

    `jit_compile`: the forward pass, the losses and the gradients are one
    XLA computation; the optimizer's update (row-sparse for the tables)
    runs outside it, as TensorFlow ops. `loss_scale`: float16's dynamic
    loss scaling (`mtlrec.training.precision.LossScale`)."""
    method = trainer.balancing.method
    keep = {id(v) for v in frozen}
    if loss_scale is not None and trainer.balancing.per_task_gradients:
        raise ValueError(f"--mixed_precision=mixed_float16 with --loss_balancing={method}: its per-task gradients "
                         "are not loss-scaled; use mixed_bfloat16, or another --loss_balancing")

    gradients_of = make_gradients(trainer, replicas, jit_compile, loss_scale)

    def replica_step(features, labels, weights):
        total, losses, effective, extra, gradients = gradients_of(features, labels, weights)
        variables = trainer.trainable_variables
        if keep:
            pairs = [(g, v) for g, v in zip(gradients, variables) if id(v) not in keep]
            gradients, variables = [g for g, _ in pairs], [v for _, v in pairs]
        if loss_scale is None:
            trainer.optimizer.apply(gradients, variables)
            return total, losses, effective, extra
        finite = loss_scale.all_finite(gradients)

        def apply():
            trainer.optimizer.apply(gradients, variables)
            return tf.constant(True)

        applied = tf.cond(finite, apply, lambda: tf.constant(False))
        with tf.control_dependencies([applied]):
            update = loss_scale.update(finite)
        with tf.control_dependencies([update]):
            total = tf.identity(total)
        return total, losses, effective, extra

    return replica_step


EMBEDDING_LAYERS = (FeatureEmbedding, AsymmetricMultiEmbedding, LowRankMultiEmbedding)
JIT_BALANCING = ("fixed", "ple_schedule", "uncertainty", "dwa")  # the rules without per-task gradients


def split_network(network: keras.Model) -> tuple[keras.layers.Layer, keras.Model]:
    """`(embedding, dense)`: the network's one embedding layer (raw features
    in; lookups, unique ids and segment means that XLA cannot compile) and
    the rest of it as a model from that layer's output to the network's
    outputs (the same layers and variables)."""
    found = [layer for layer in network.layers if isinstance(layer, EMBEDDING_LAYERS)]
    if len(found) != 1:
        raise ValueError(f"--jit_compile: {network.name} has {len(found)} embedding layers; the step compiles "
                         "what follows exactly one")
    return found[0], keras.Model(found[0].output, network.output, name=f"{network.name}_dense")


def _jit_gradients(trainer: MultiTaskTrainer, replicas: int, loss_scale: LossScale | None):
    """`gradients_of` (see `make_replica_step`) with the dense part in XLA:
    the embedding layer runs as TensorFlow ops under a tape of its own; the
    dense layers, losses and their gradients (to the dense variables and
    to the embedding layer's output) are one `jit_compile` function; the
    tables' row-sparse gradients come from the outer tape, fed the output's
    gradient. The embedding L2 penalty (the embedding layer's loss) is
    added to the loss outside XLA, its gradient with the tables'."""
    if trainer.balancing.method not in JIT_BALANCING:
        raise ValueError(f"--jit_compile works with --loss_balancing={', '.join(JIT_BALANCING)}; "
                         f"{trainer.balancing.method} takes per-task gradients through the tables")
    embedding, dense = split_network(trainer.network)
    table_ids = {id(v) for v in embedding.trainable_variables}

    def compiled(embedded, labels, weights):
        variables = [v for v in trainer.trainable_variables if id(v) not in table_ids]
        with tf.GradientTape() as tape:
            tape.watch(embedded)
            predictions = dense(embedded, training=True)
            losses = trainer.task_losses(labels, predictions, weights)
            total = trainer.total_loss(losses, labels, predictions, layer_losses=dense.losses)
            scaled = total * loss_scale.scale if loss_scale is not None else total
        gradients, to_embedded = tape.gradient(scaled, (variables, embedded))
        return total, losses, trainer.effective_weights(), gradients, to_embedded

    compiled = tf.function(compiled, jit_compile=True, autograph=False)

    def gradients_of(features, labels, weights):
        with tf.GradientTape() as tape:
            embedded = embedding(features, training=True)
            penalty = tf.add_n([tf.cast(v, tf.float32) for v in embedding.losses]) if embedding.losses else None
        total, losses, effective, gradients, to_embedded = compiled(embedded, labels, weights)
        tables = embedding.trainable_variables
        scale = loss_scale.scale if loss_scale is not None else 1.0
        if penalty is not None:  # d(scale * penalty / replicas): the penalty as the tape recorded it, weighted
            total = total + penalty / replicas
            table_gradients = tape.gradient([embedded, penalty], tables,
                                            output_gradients=[to_embedded, tf.ones_like(penalty) * scale / replicas])
        else:
            table_gradients = tape.gradient(embedded, tables, output_gradients=to_embedded)
        if loss_scale is not None:
            gradients, table_gradients = loss_scale.unscale(gradients), loss_scale.unscale(table_gradients)
        by_id = {id(v): g for v, g in zip(tables, table_gradients)}
        dense_grads = iter(gradients)
        ordered = [by_id[id(v)] if id(v) in by_id else next(dense_grads) for v in trainer.trainable_variables]
        return total, losses, effective, {}, ordered

    return gradients_of


def step_outputs(trainer: MultiTaskTrainer) -> list[str]:
    """The names of a step's outputs besides the loss: the per-task losses,
    the task weights and, under pcgrad, the conflicts."""
    tasks = trainer.tasks
    return [*tasks, *(f"{t}_weight" for t in tasks),
            *(["pcgrad_conflicts"] if trainer.balancing.method == "pcgrad" else [])]


def make_train_step(trainer: MultiTaskTrainer, strategy: tf.distribute.Strategy, frozen: Sequence = (),
                    loop: bool = False, jit_compile: bool = False, loss_scale: LossScale | None = None):
    """The step on a distributed iterator (see the module doc). Returns the
    global loss, the mean per-task losses and the task weights of the step.
    Call under `strategy.scope()` with the trainer built (its variables
    exist).

    `loop=False` gives `step(iterator)`: one step, scalars out. `loop=True`
    gives `steps(iterator, count)` (`step_loop.repeat`): `count` steps in
    one `tf.function` call (`--steps_per_execution`). `jit_compile` and
    `loss_scale`: see `make_replica_step`."""
    if not trainer.optimizer.built:  # its slots must not be created inside the step
        trainer.optimizer.build(trainer.trainable_variables)
    replica_step = make_replica_step(trainer, strategy.num_replicas_in_sync, frozen, jit_compile, loss_scale)

    def step(iterator):
        total, losses, effective, extra = strategy.run(replica_step, args=next(iterator))
        if "task_weights" in extra:  # the same on every replica
            trainer.task_weights.assign(strategy.reduce("MEAN", extra["task_weights"], axis=None))
            trainer.initial_losses.assign(strategy.reduce("MEAN", extra["initial_losses"], axis=None))
        out = {t: strategy.reduce("MEAN", v, axis=None) for t, v in losses.items()}
        weights = strategy.reduce("MEAN", effective, axis=None)
        out.update({f"{t}_weight": weights[i] for i, t in enumerate(trainer.tasks)})
        if "conflicts" in extra:
            out["pcgrad_conflicts"] = strategy.reduce("MEAN", extra["conflicts"], axis=None)
        return strategy.reduce("SUM", total, axis=None), out

    # No AutoGraph: the step has no tensor-dependent Python control flow, and
    # converting its code took 2.7 s of a 4.9 s trace (PLE), paid by every run.
    if not loop:
        return tf.function(step, autograph=False)
    return step_loop.repeat(step, step_outputs(trainer))

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

import tensorflow as tf

from mtlrec.training import balancing, step_loop
from mtlrec.training.trainer import MultiTaskTrainer


def make_replica_step(trainer: MultiTaskTrainer, replicas: int, frozen: Sequence = ()):
    """`replica_step(features, labels, weights)`: one replica's share of a
    step; applies the gradients and returns its loss, the per-task losses,
    the task weights of the step and the rule's extra values (`conflicts`
    of pcgrad; `task_weights` and `initial_losses` of gradnorm, to assign
    once reduced). `frozen`: variables the step leaves alone (frozen tasks'
    own parameters: neither they nor their optimizer slots change)."""
    method = trainer.balancing.method
    keep = {id(v) for v in frozen}

    def replica_step(features, labels, weights):
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
        effective = trainer.effective_weights()
        extra = {}
        if method == "pcgrad":
            gradients, extra["conflicts"] = balancing.pcgrad_gradients(
                tape, terms, common, variables, trainer.optimizer.iterations, replicas)
        else:
            gradients = tape.gradient(total, variables)
        if method == "gradnorm":
            extra["task_weights"], extra["initial_losses"] = balancing.gradnorm_step(
                tape, plain, gradients, variables, tf.stack([losses[t] for t in trainer.tasks]),
                tf.convert_to_tensor(trainer.task_weights), tf.convert_to_tensor(trainer.initial_losses),
                trainer.balancing, replicas)
        if keep:
            pairs = [(g, v) for g, v in zip(gradients, variables) if id(v) not in keep]
            gradients, variables = [g for g, _ in pairs], [v for _, v in pairs]
        trainer.optimizer.apply(gradients, variables)
        return total, losses, effective, extra

    return replica_step


def step_outputs(trainer: MultiTaskTrainer) -> list[str]:
    """The names of a step's outputs besides the loss: the per-task losses,
    the task weights and, under pcgrad, the conflicts."""
    tasks = trainer.tasks
    return [*tasks, *(f"{t}_weight" for t in tasks),
            *(["pcgrad_conflicts"] if trainer.balancing.method == "pcgrad" else [])]


def make_train_step(trainer: MultiTaskTrainer, strategy: tf.distribute.Strategy, frozen: Sequence = (),
                    loop: bool = False):
    """The step on a distributed iterator (see the module doc). Returns the
    global loss, the mean per-task losses and the task weights of the step.
    Call under `strategy.scope()` with the trainer built (its variables
    exist).

    `loop=False` gives `step(iterator)`: one step, scalars out. `loop=True`
    gives `steps(iterator, count)` (`step_loop.repeat`): `count` steps in
    one `tf.function` call (`--steps_per_execution`)."""
    if not trainer.optimizer.built:  # its slots must not be created inside the step
        trainer.optimizer.build(trainer.trainable_variables)
    replica_step = make_replica_step(trainer, strategy.num_replicas_in_sync, frozen)

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

"""The training job: `train(config)` checks everything knowable before the
first step, claims MODEL_DIR, builds the run, trains the epochs left,
scores the selected weights on test and writes the model and results."""

from __future__ import annotations

import time
from typing import Any

import tensorflow as tf
from absl import logging

from mtlrec import cluster, provenance
from mtlrec import io as mio
from mtlrec.data.manifest import DatasetChanged, Manifest, load_manifest
from mtlrec.export import save_export_info
from mtlrec.rundir import RunDir
from mtlrec.training import divergence, loop, preflight, results, warm_start
from mtlrec.training.config import TrainConfig
from mtlrec.training.divergence import TrainingDiverged
from mtlrec.training.run import Run
from mtlrec.training.runtime import make_strategy, op_threads, set_op_threads, threads_chosen


def train(config: TrainConfig, flags: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train, select the best epoch on validation, evaluate it on test and
    write `MODEL_DIR/metrics.json` (returned too). `flags`: the command's
    flag values, recorded with the versions and times as `provenance`.

    Everything knowable before the first step is checked first
    (`mtlrec.training.preflight`); MODEL_DIR is claimed for this run
    (`RunDir`: same settings resume, other settings stop, one writer at a
    time)."""
    started_at, started = provenance.now(), time.time()
    if not threads_chosen() and op_threads() == {"intra": 0, "inter": 0}:  # the faster default, if still possible
        set_op_threads()
    manifest = load_manifest(config.data)
    logging.info("data: %s (%s rows in train/valid/test); run: %s", config.data,
                 "/".join(str(manifest.rows(s)) for s in preflight.SPLITS_NEEDED if s in manifest.splits),
                 config.model_dir)
    preflight.check_run(config, manifest)
    parent = warm_start.check(config, manifest) if config.warm_start else None
    worker = cluster.current()
    with RunDir(config.model_dir, config, manifest, parent) if worker.is_chief else _Follower() as rundir:
        try:
            return _train(config, manifest, rundir, (started_at, started), flags, parent)
        except TrainingDiverged:
            rundir.status("diverged")
            raise
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            manifest.check_files(checksums=True)  # names the bad shard
            if isinstance(e, tf.errors.DataLossError):
                raise ValueError(f"{manifest.root}: a shard cannot be read ({e.message.splitlines()[0]})") from None
            raise


class _Follower:
    """What a non-chief worker has instead of a `RunDir`: it writes nothing
    in MODEL_DIR, so it neither claims nor locks it."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def status(self, status: str, **extra: Any) -> None:
        pass


def _train(config: TrainConfig, manifest: Manifest, rundir: RunDir | _Follower, start: tuple[str, float],
           flags: dict[str, Any] | None, parent: dict[str, Any] | None = None) -> dict[str, Any]:
    run = Run(config, manifest, make_strategy(config.devices))
    try:
        return _train_run(run, rundir, start, flags, parent)
    finally:
        run.close()


def _train_run(run: Run, rundir: RunDir | _Follower, start: tuple[str, float],
               flags: dict[str, Any] | None, parent: dict[str, Any] | None = None) -> dict[str, Any]:
    config, manifest = run.config, run.manifest
    started_at, started = start
    run.started = started
    # A non-chief worker starting over must not read checkpoints the chief is deleting.
    done = 0 if config.overwrite and not run.worker.is_chief else run.restore()
    if parent is not None and done == 0:  # a resumed run has the parent's weights in its checkpoint
        parent["carried"] = warm_start.apply(run, parent)
    if run.state.stopped_early:
        if loop.still_stopped(run):
            logging.info("the run stopped early after epoch %d (--patience=%d%s): nothing to train; pass a larger "
                         "--patience to train further", run.state.epoch, config.patience,
                         f", --task_patience={config.task_patience}" if config.task_patience else "")
            done = run.epochs
        else:  # more patience than when it stopped: the epochs it would have trained
            logging.info("the run stopped early after epoch %d; with --patience=%d it trains on", run.state.epoch,
                         config.patience)
            run.state.stopped_early = False
    if done < run.epochs:
        rundir.status("training", epochs=run.epochs)
        try:
            loop.fit(run, done)
        except DatasetChanged:
            raise
        except Exception:  # a shard gone or rewritten mid-epoch: say why, not what TensorFlow saw
            manifest.check_unchanged("while an epoch read it")
            raise
    if not run.worker.is_chief:
        logging.info("%s: training done; the chief evaluates and writes %s", run.worker, config.model_dir)
        return {"worker": run.worker.index, "epochs_run": run.state.epoch}
    run.load_best()
    manifest.check_unchanged("before the test split was scored")
    logging.info("evaluating the best epoch (%s) on the test split (%d rows)", run.state.best_epoch,
                 manifest.rows("test"))
    test, diag = results.score_test(run)
    manifest.check_unchanged("while the test split was scored")
    metrics = results.metrics(run, test, started, diag)
    if parent is not None:
        metrics["parent"] = parent
        metrics["lineage"] = warm_start.lineage(parent)
    divergence.check_selected(run.network)
    logging.info("saving %s", mio.join(config.model_dir, "model.keras"))
    run.save_model()
    save_export_info(config.model_dir, config.model, manifest.schema, [t.name for t in config.tasks])
    results.write(config.model_dir, metrics, diag, started_at, flags)
    rundir.status("finished", epochs=run.state.epoch, best_epoch=run.state.best_epoch)
    return metrics

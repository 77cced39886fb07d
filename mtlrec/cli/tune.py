"""mtlrec-tune: keras-tuner search over a model's hyperparameters.

  mtlrec-tune --flagfile=experiments/mmoe_tune.flags --tuner_dir=runs/tune_mmoe --max_trials=10
  mtlrec-train --flagfile=runs/tune_mmoe/best.flags          # retrain the best trial

Takes every mtlrec-train flag as the base configuration; each trial trains
in TUNER_DIR/trial_<id>/run/ (beside keras-tuner's trial.json). Rerunning
the same command resumes the search. Under TF_CONFIG with several workers
(`mtlrec-launch --command=tune`), the chief runs the search and every
trial trains on all workers.
"""

from __future__ import annotations

import json

from absl import flags

from mtlrec.cli import train as train_cli  # defines the training flags
from mtlrec.cli.common import run

_TUNER_DIR = flags.DEFINE_string("tuner_dir", None, "Search directory: state, trials, best.flags, trials.{md,csv}.")
_TUNER = flags.DEFINE_enum("tuner", "bayesian", ["random", "bayesian", "hyperband"], "Search algorithm.")
_MAX_TRIALS = flags.DEFINE_integer("max_trials", 10, "Trials in total (a resumed search counts finished ones).", lower_bound=1)
_OBJECTIVE = flags.DEFINE_string("objective", "auc_mean", "Validation objective: auc_mean, a task name (its AUC), or task=w,... (weighted AUC sum).")
_SPACE = flags.DEFINE_string("search_space", None, "JSON file updating the model's default search space.")


def main(argv):
    del argv
    train_cli.check_model(train_cli._MODEL.value)
    train_cli.check_data(train_cli._DATA.value)
    worker = train_cli.join_cluster()
    from mtlrec import tuning

    base = train_cli.config_from_flags()
    if not worker.is_chief:  # trains the chief's trials; the chief alone writes the search
        trials = tuning.follow(base)
        print(json.dumps({"worker": worker.index, "trials_trained": trials}))
        return 0
    tasks = tuple(t.name for t in base.tasks)
    tuner_dir = _TUNER_DIR.value or f"runs/tune_{base.model}"
    from mtlrec import outputs

    outputs.claim(tuner_dir, "tuner", "tuner_dir")  # resumes a search; never writes into someone else's folder
    objective, weights = tuning.objective_of(_OBJECTIVE.value, tasks)
    space = tuning.load_space(base.model, tasks, _SPACE.value)
    hypermodel = tuning.MtlrecHyperModel(base, space, objective, weights)
    result = tuning.search(hypermodel, tuner_dir, _TUNER.value, _MAX_TRIALS.value, base.seed)
    print(json.dumps({**result, "best_flags": f"{tuner_dir}/best.flags"}, indent=1))
    return 0


def entry_point() -> None:
    run(main, flag_modules=(train_cli.__name__,))


if __name__ == "__main__":
    entry_point()

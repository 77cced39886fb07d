"""Hyperparameter search with keras-tuner over the builders and training of
`mtlrec-train`: each trial is `mtlrec.training.train` on a TrainConfig
derived from the trial's hyperparameters (one code path).

The objective is read from mtlrec's own validation metrics (exact AUC per
task, computed by `training.evaluate`), under names that do not depend on
the number of model outputs: `val_auc_mean`, `val_<task>_auc`, or
`val_weighted_auc` for a weighted sum of task AUCs.

Under MultiWorkerMirroredStrategy (TF_CONFIG names several workers) the
chief alone runs keras-tuner and writes the search; before each trial it
sends the trial's settings to the other workers (`share_from_chief`),
which train it with it (`follow`), so every trial trains on all workers.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import math
import os
from typing import Any

import keras_tuner as kt
import pandas as pd
from absl import logging
from keras_tuner.src.engine import oracle as oracle_module

from mtlrec import cluster
from mtlrec import io as mio
from mtlrec.config import ModelConfig
from mtlrec.training import TrainConfig, make_strategy, share_from_chief, train
from mtlrec.training.config import config_to_flags

# A search space: name -> {"type": "float"|"int"|"choice", ...}. Names are
# TrainConfig / ModelConfig fields, or "loss_weight/<task>".
Space = dict[str, dict[str, Any]]

_COMMON: Space = {
    "learning_rate": {"type": "float", "min": 1e-3, "max": 2e-2, "log": True},
    "dropout": {"type": "choice", "values": [0.0, 0.1, 0.2]},
    "embedding_dim": {"type": "choice", "values": [8, 16, 32]},
    "embedding_l2": {"type": "choice", "values": [0.0, 1e-5, 1e-4]},
    "tower_units": {"type": "choice", "values": [16, 32, 64]},
}
_EXPERTS: Space = {"expert_units": {"type": "choice", "values": [32, 64, 128]}}
_MODEL_SPACES: dict[str, Space] = {
    "shared_bottom": {"bottom_units": {"type": "choice", "values": [64, 128, 256]}},
    "omoe": {**_EXPERTS, "num_experts": {"type": "int", "min": 2, "max": 8}},
    "mmoe": {**_EXPERTS, "num_experts": {"type": "int", "min": 2, "max": 8}},
    "cgc": {**_EXPERTS, "num_shared_experts": {"type": "int", "min": 1, "max": 3},
            "num_task_experts": {"type": "int", "min": 1, "max": 2}},
    "ple": {**_EXPERTS, "num_shared_experts": {"type": "int", "min": 1, "max": 3},
            "num_task_experts": {"type": "int", "min": 1, "max": 2}, "num_levels": {"type": "int", "min": 1, "max": 3}},
    "esmm": {},
    "escm2_ips": {"escm2_lambda_cf": {"type": "float", "min": 0.01, "max": 1.0, "log": True}},
    "escm2_dr": {"escm2_lambda_cf": {"type": "float", "min": 0.01, "max": 1.0, "log": True}},
    "aitm": {**_EXPERTS, "aitm_beta": {"type": "float", "min": 0.1, "max": 1.0}},
    "stem": {**_EXPERTS, "num_shared_experts": {"type": "int", "min": 1, "max": 2}},
    "mmoe_dlen": {**_EXPERTS, "num_experts": {"type": "int", "min": 2, "max": 6},
                  "dlen_alpha_scale": {"type": "float", "min": 0.1, "max": 0.5}},
    "ple_dlen": {**_EXPERTS, "num_shared_experts": {"type": "int", "min": 1, "max": 3},
                 "dlen_alpha_scale": {"type": "float", "min": 0.1, "max": 0.5}},
}
for _name in ("aple", "aple_lowrank", "ple_ame", "ple_residual"):
    _MODEL_SPACES[_name] = {**_MODEL_SPACES["ple"], "ame_shared_dim": {"type": "choice", "values": [8, 16, 32]}}
_MODEL_SPACES["aple_lowrank"]["ame_rank"] = {"type": "int", "min": 2, "max": 8}


def default_space(model: str, tasks: tuple[str, ...]) -> Space:
    """The built-in search space of a model, with a loss weight per later task."""
    space = {**_COMMON, **copy.deepcopy(_MODEL_SPACES.get(model, {}))}
    for t in tasks[1:]:
        space[f"loss_weight/{t}"] = {"type": "float", "min": 0.5, "max": 2.0}
    return space


def load_space(model: str, tasks: tuple[str, ...], path: str | None) -> Space:
    """Defaults updated by a JSON file (`{"name": {...}}`; null removes a name)."""
    space = default_space(model, tasks)
    if path:
        with mio.open_text(path) as f:
            try:
                extra = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{e.lineno}:{e.colno}: invalid search space JSON: {e.msg}") from e
        if not isinstance(extra, dict):
            raise ValueError(f"{path}: expected a JSON object of name -> spec. Received: {type(extra).__name__}")
        for name, spec in extra.items():
            if spec is None:
                space.pop(name, None)
            else:
                space[name] = spec
    for name, spec in space.items():
        _check(name, spec)
    return space


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} | {f.name for f in dataclasses.fields(ModelConfig)}


def _check(name: str, spec: Any) -> None:
    field = name.split("/", 1)[0]
    if field not in _FIELDS and field != "loss_weight":
        raise ValueError(f"Search space names {name!r}, which is not a training or model setting")
    example = '{"type": "float", "min": 0.001, "max": 0.1}'
    if not isinstance(spec, dict):
        raise ValueError(f"Search space {name!r}: expected an object like {example} or "
                         f'{{"type": "choice", "values": [...]}}. Received: {spec!r}')
    kind = spec.get("type")
    if kind not in ("float", "int", "choice"):
        raise ValueError(f"Search space {name!r}: type must be float, int or choice. Received: {spec}")
    if kind == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise ValueError(f"Search space {name!r}: a choice needs a non-empty list \"values\". Received: {spec}")
        return
    for key in ("min", "max"):
        value = spec.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"Search space {name!r}: {kind} needs a finite number {key!r} (like {example}). "
                             f"Received: {spec}")
    if spec["min"] > spec["max"] or kind == "int" and not all(float(spec[k]).is_integer() for k in ("min", "max")):
        raise ValueError(f"Search space {name!r}: expected min <= max{' (integers)' if kind == 'int' else ''}. "
                         f"Received: {spec}")
    if spec.get("log") and spec["min"] <= 0:
        raise ValueError(f"Search space {name!r}: log sampling needs min > 0. Received: {spec}")


def declare(hp: kt.HyperParameters, space: Space) -> dict[str, Any]:
    """Declares the space on `hp` and returns this trial's values."""
    values = {}
    for name, spec in space.items():
        if spec["type"] == "float":
            values[name] = hp.Float(name, spec["min"], spec["max"], sampling="log" if spec.get("log") else "linear")
        elif spec["type"] == "int":
            values[name] = hp.Int(name, spec["min"], spec["max"])
        else:
            values[name] = hp.Choice(name, spec["values"])
    return values


def apply(base: TrainConfig, values: dict[str, Any], model_dir: str, epochs: int | None = None) -> TrainConfig:
    """`base` with the trial's values (widths become one-layer tuples)."""
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    model_kw, train_kw = {}, {"model_dir": model_dir}
    loss_weights = dict(base.loss_weights)
    for name, value in values.items():
        if name.startswith("loss_weight/"):
            loss_weights[name.split("/", 1)[1]] = float(value)
            continue
        current = getattr(base.model_config, name, None) if name in model_fields else getattr(base, name)
        if isinstance(current, tuple):
            value = (int(value),)
        (model_kw if name in model_fields else train_kw)[name] = value
    if epochs is not None:
        train_kw["epochs"] = epochs
    return dataclasses.replace(base, model_config=dataclasses.replace(base.model_config, **model_kw),
                               loss_weights=loss_weights, **train_kw)


def objective_of(spec: str, tasks: tuple[str, ...]) -> tuple[str, dict[str, float] | None]:
    """(`name`, weights): "auc_mean", "<task>", or "task=w,task=w"."""
    if spec == "auc_mean":
        return "val_auc_mean", None
    if "=" not in spec:
        if spec not in tasks:
            raise ValueError(f"--objective={spec}: expected auc_mean, a task of {list(tasks)}, or task=w,...")
        return f"val_{spec}_auc", None
    from mtlrec.config import parse_task_floats

    weights = parse_task_floats(spec.split(","), "objective")
    unknown = set(weights) - set(tasks)
    if unknown:
        raise ValueError(f"--objective names unknown task(s) {sorted(unknown)}; tasks are {list(tasks)}")
    return "val_weighted_auc", weights


def objective_value(valid: dict[str, Any], name: str, weights: dict[str, float] | None) -> float:
    if name == "val_auc_mean":
        return float(valid["auc_mean"])
    if name == "val_weighted_auc":
        return float(sum(w * valid[t]["auc"] for t, w in weights.items()))
    return float(valid[name[len("val_"):-len("_auc")]]["auc"])


class MtlrecHyperModel(kt.HyperModel):
    """A HyperModel over mtlrec's builders and training.

    `build(hp)` returns the network `mtlrec-train` would build for these
    hyperparameters; `run(hp, trial_dir, epochs)` trains and evaluates it
    with `mtlrec.training.train` and returns the objective.
    """

    def __init__(self, base: TrainConfig, space: Space, objective: str, weights: dict[str, float] | None = None):
        super().__init__(name=base.model)
        self.base, self.space, self.objective, self.weights = base, space, objective, weights

    def config(self, hp: kt.HyperParameters, model_dir: str, epochs: int | None = None) -> TrainConfig:
        return apply(self.base, declare(hp, self.space), model_dir, epochs)

    def build(self, hp):
        from mtlrec.data import load_manifest
        from mtlrec.models import build_model

        cfg = self.config(hp, self.base.model_dir)
        return build_model(cfg.model, load_manifest(cfg.data), cfg.model_config,
                           task_labels={t.name: t.label for t in cfg.tasks},
                           fused_embedding_sets=cfg.fused_embedding_sets)

    def run(self, hp, trial_dir: str, epochs: int | None = None) -> dict[str, float]:
        from mtlrec.data import load_manifest
        from mtlrec.rundir import recorded_differences

        values = declare(hp, self.space)
        cfg = apply(self.base, values, trial_dir, epochs)
        stale = recorded_differences(trial_dir, cfg, load_manifest(cfg.data))
        if stale:
            # A search killed before the oracle saved this trial id reuses it
            # with new values: the folder holds a trial nobody will resume.
            logging.warning("%s holds an unrecorded trial of a killed search (%s); starting it over",
                            trial_dir, "; ".join(stale))
            cfg = dataclasses.replace(cfg, overwrite=True)
        if cluster.current().multi:  # the other workers train this trial with the chief
            share_from_chief(make_strategy(), json.dumps({"values": values, "trial_dir": trial_dir, "epochs": epochs,
                                                          "overwrite": cfg.overwrite}))
        metrics = train(cfg)  # claims trial_dir: an interrupted trial with the same values resumes
        mio.write_atomic(mio.join(trial_dir, "trial.flags"), "\n".join(config_to_flags(cfg)).encode() + b"\n")
        value = objective_value(metrics["valid"], self.objective, self.weights)
        return {self.objective: value}


class _Display(oracle_module.Display):
    """keras-tuner's progress display, naming trials by their id (the
    trial_<id>/ folder) instead of a count from 1."""

    def on_trial_begin(self, trial):
        if self.verbose < 1:
            return
        self.trial_start[trial.trial_id] = datetime.datetime.now()
        self.search_start = self.search_start or self.trial_start[trial.trial_id]
        self.trial_number[trial.trial_id] = trial.trial_id  # "Trial <id> Complete" at the end
        print(f"\nSearch: running trial {trial.trial_id} (in trial_{trial.trial_id}/run)\n")
        self.show_hyperparameter_table(trial)
        print()


class _RunsMtlrec:
    """Tuner mixin: a trial is `MtlrecHyperModel.run` in its own directory,
    `TUNER_DIR/trial_<id>/run/`, beside keras-tuner's `trial.json`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        display = _Display(self.oracle, verbose=self.oracle._display.verbose)
        display.set_state(self.oracle._display.get_state())  # restored by a resumed search
        self.oracle._display = display

    def run_trial(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        epochs = hp.values.get("tuner/epochs")  # Hyperband's budget for this trial
        trial_dir = trial_run_dir(self.project_dir, trial.trial_id)
        return self.hypermodel.run(hp, trial_dir, int(epochs) if epochs else None)


def trial_run_dir(tuner_dir: str, trial_id: str) -> str:
    return os.path.join(tuner_dir, f"trial_{trial_id}", "run")


class RandomTuner(_RunsMtlrec, kt.RandomSearch):
    pass


class BayesianTuner(_RunsMtlrec, kt.BayesianOptimization):
    pass


class HyperbandTuner(_RunsMtlrec, kt.Hyperband):
    pass


def make_tuner(kind: str, hypermodel: MtlrecHyperModel, tuner_dir: str, max_trials: int, seed: int = 0):
    """A resumable tuner: state lives in `tuner_dir`; a rerun skips finished trials."""
    objective = kt.Objective(hypermodel.objective, direction="max")
    common = dict(hypermodel=hypermodel, objective=objective, directory=os.path.dirname(os.path.abspath(tuner_dir)),
                  project_name=os.path.basename(os.path.abspath(tuner_dir)), overwrite=False, seed=seed)
    if kind == "random":
        return RandomTuner(max_trials=max_trials, **common)
    if kind == "bayesian":
        return BayesianTuner(max_trials=max_trials, **common)
    if kind == "hyperband":
        return HyperbandTuner(max_epochs=max(hypermodel.base.epochs, 2), factor=3,
                              hyperband_iterations=1, **common)
    raise ValueError(f"--tuner={kind}: expected random, bayesian or hyperband")


def trial_table(tuner, objective: str) -> pd.DataFrame:
    rows = []
    for trial in tuner.oracle.trials.values():
        row = {"trial": trial.trial_id, "status": trial.status,
               objective: trial.score if trial.score is not None and not math.isnan(trial.score) else None}
        row.update({k: v for k, v in trial.hyperparameters.values.items()})
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.sort_values(objective, ascending=False, na_position="last").reset_index(drop=True) if len(df) else df


def follow(base: TrainConfig) -> int:
    """A non-chief worker's part of a multi-worker search: trains each
    trial the chief announces (`MtlrecHyperModel.run`), until the chief
    says the search is over; the trials trained. Writes nothing in the
    search directory."""
    strategy, trials = make_strategy(), 0
    while True:
        message = json.loads(share_from_chief(strategy, None))
        if "trial_dir" not in message:
            if message.get("error"):
                raise RuntimeError(f"the chief's search stopped: {message['error']}")
            logging.info("%s: the search is over (%d trials trained here)", cluster.current(), trials)
            return trials
        cfg = apply(base, message["values"], message["trial_dir"], message["epochs"])
        logging.info("%s: training trial %s", cluster.current(), message["trial_dir"])
        train(dataclasses.replace(cfg, overwrite=bool(message["overwrite"])))
        trials += 1


def search(hypermodel: MtlrecHyperModel, tuner_dir: str, kind: str = "random", max_trials: int = 10,
           seed: int = 0) -> dict[str, Any]:
    """Runs (or resumes) a search; writes `best.flags`, `trials.md`, `trials.csv`.
    Under multi-worker training, on the chief, with the others in `follow`."""
    tuner = make_tuner(kind, hypermodel, tuner_dir, max_trials, seed)
    multi = cluster.current().multi
    try:
        tuner.search()
    except BaseException as e:
        if multi:  # between trials the others wait for a message: let them stop too
            share_from_chief(make_strategy(), json.dumps({"error": f"{type(e).__name__}: {e}"[:2000]}))
        raise
    if multi:
        share_from_chief(make_strategy(), json.dumps({"done": True}))
    table = trial_table(tuner, hypermodel.objective)
    mio.write_atomic(mio.join(tuner_dir, "trials.csv"), table.to_csv(index=False).encode())
    mio.write_atomic(mio.join(tuner_dir, "trials.md"), _markdown(table).encode())
    best = tuner.oracle.get_best_trials(1)
    if not best:
        raise RuntimeError(f"No trial of {tuner_dir} finished")
    best_trial = best[0]
    epochs = best_trial.hyperparameters.values.get("tuner/epochs")
    cfg = hypermodel.config(best_trial.hyperparameters, mio.join(tuner_dir, "best_model"),
                            int(epochs) if epochs else None)
    lines = [f"# Best trial {best_trial.trial_id}: {hypermodel.objective}={best_trial.score:.6f}", *config_to_flags(cfg)]
    mio.write_atomic(mio.join(tuner_dir, "best.flags"), ("\n".join(lines) + "\n").encode())
    return {"best_trial": best_trial.trial_id, "best_score": best_trial.score, "trials": len(table),
            "objective": hypermodel.objective}


def _markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "(no trials)\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(_cell(row[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)

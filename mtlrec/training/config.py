"""`TrainConfig`, one training run's settings, and the one mapping between
its fields and mtlrec-train's flags.

Each field says whether it is part of the run's identity (`RunDir` compares
the identity of a rerun with the recorded one): `"always"`, `"never"` (how
the run is carried out, not what the weights mean: a rerun may change it),
`"when_set"` (only when it differs from its default, so runs recorded
before the setting existed still resume) or `"balancing"` (only the
settings the chosen balancing rule uses).

The flags carry the same names as the fields of `TrainConfig` and
`ModelConfig`; `config_from_flag_values` and `config_to_flags` convert
between the two by the field types (task lists, `task=number` lists,
integer lists). No absl and no TensorFlow here: `mtlrec-train --help`
reads the defaults from this module.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from mtlrec.config import ModelConfig, TaskSpec, parse_task_floats, parse_tasks

# --embedding_optimizer -> LazyAdam's rule for the row-sparse (embedding) gradients.
EMBEDDING_OPTIMIZERS = {"lazy_adam": "adam", "adagrad": "adagrad", "sgd": "sgd"}
# The tables' learning rate when --embedding_learning_rate is not given.
# lazy_adam: --learning_rate. Adagrad and SGD need far larger steps on
# row-sparse gradients (a row's gradient is its share of a batch mean):
# at --learning_rate (5e-3) they barely move the tables. Measured on PLE,
# 300k generated rows, 3 epochs, test click/like/share AUC (docs/BENCHMARKS.md):
# lazy_adam 0.7099/0.7990/0.8002; adagrad 5e-3 0.6203/0.6907/0.6658, 0.2
# 0.6686/0.7583/0.7463, 2.0 0.7058/0.7982/0.8005, 4.0 0.7115/0.7997/0.8039;
# sgd 5e-3 0.6151/0.6844/0.6573, 5.0 0.7029/0.7962/0.7955, 20.0 0.7136/0.8016/0.8056.
SPARSE_DEFAULT_LEARNING_RATES = {"adagrad": 4.0, "sgd": 20.0}
UNSEEN_IDS = ("oov", "own_row")
WARM_START_OPTIMIZER = ("reset", "carry")
# shuffled: files, blocks and rows shuffled per epoch (seeded); stored: the train split's stored order,
# files one after another (time order for a split made with --order_by)
TRAIN_ORDERS = ("shuffled", "stored")
MIXED_PRECISION = ("float32", "mixed_bfloat16", "mixed_float16")  # mtlrec.training.precision.POLICIES

IDENTITY = ("always", "never", "when_set", "balancing")


def _field(default: Any = dataclasses.MISSING, *, identity: str = "always", factory: Any = dataclasses.MISSING):
    assert identity in IDENTITY, identity
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata={"identity": identity})
    return dataclasses.field(default=default, metadata={"identity": identity})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run (see `mtlrec-train --help` for each field)."""

    model: str = _field()
    model_dir: str = _field(identity="never")
    data: str = _field(identity="never")
    tasks: tuple[TaskSpec, ...] = _field()
    model_config: ModelConfig = _field()
    loss_weights: dict[str, float] = _field(factory=dict)
    loss_balancing: str = _field("fixed", identity="balancing")  # mtlrec.training.balancing.METHODS
    loss_weight_decay: dict[str, float] = _field(factory=dict, identity="balancing")  # ple_schedule, per step
    dwa_temperature: float = _field(2.0, identity="balancing")
    gradnorm_alpha: float = _field(1.5, identity="balancing")
    gradnorm_learning_rate: float = _field(0.025, identity="balancing")
    # mtlrec.training.embedding_reset.RESETS: MEDA's reset before every epoch after the first
    embedding_reset: str = _field("none", identity="when_set")
    # lazy_adam | adagrad | sgd, for the row-sparse embedding updates
    embedding_optimizer: str = _field("lazy_adam", identity="when_set")
    # None: learning_rate for lazy_adam, SPARSE_DEFAULT_LEARNING_RATES for adagrad and sgd
    embedding_learning_rate: float | None = _field(None, identity="when_set")
    # per-step decay of every table row (LazyAdam's sparse_decay, applied lazily); 0: off
    embedding_decay: float = _field(0.0, identity="when_set")
    train_order: str = _field("shuffled", identity="when_set")  # TRAIN_ORDERS
    task_patience: int = _field(0, identity="when_set")  # > 0: per-task early stopping; 0: off
    # fraction of training ids sent to the out-of-vocabulary row (cold start): it trains the row that
    # ids unseen in training read. 0.02 (the default): measured on the time-ordered generated log,
    # test rows with an id new to training (11% of them), MMoE, 3 seeds: calibration 1.05 / 1.12
    # (click / like) against 1.18 / 1.59 with their own untrained rows, AUC on all rows equal or
    # better, train speed within 1% (docs/BENCHMARKS.md, "Ids the train split never holds").
    # Recorded in run.json always: runs from before this default refuse to resume without it.
    oov_dropout: float = _field(0.02)
    # the id features oov_dropout acts on; () = users and items (data.dataset.oov_features)
    oov_features: tuple[str, ...] = _field((), identity="when_set")
    # ids the train split never holds: "oov" reads the out-of-vocabulary row (trained by oov_dropout),
    # "own_row" their own row (never trained: its initial draw). With oov_dropout always "oov".
    unseen_ids: str = _field("oov")
    epochs: int = _field(1, identity="never")
    train_steps: int | None = _field(None, identity="never")
    batch_size: int = _field(2048)
    # training steps per tf.function call (speed only; the same steps)
    steps_per_execution: int = _field(8, identity="never")
    eval_batch_size: int = _field(16384, identity="never")
    learning_rate: float = _field(5e-3)
    seed: int = _field(0)
    monitor: str = _field("auc_mean")
    patience: int = _field(1, identity="never")
    devices: tuple[str, ...] = _field((), identity="never")
    tensorboard: bool = _field(True, identity="never")
    # also score the test split after every epoch (history[i]["test"])
    test_each_epoch: bool = _field(False, identity="never")
    verbose: int = _field(1, identity="never")
    overwrite: bool = _field(False, identity="never")  # start over in a model_dir that holds a run
    # a finished run whose selected weights this run starts from (mtlrec.training.warm_start)
    warm_start: str | None = _field(None, identity="when_set")
    # the optimizer's state at the start of a warm-started run: "carry" (the parent's last checkpoint's moments
    # and step count; rows of new ids start at zero) or "reset" (fresh moments, step 0). carry by the day-by-day
    # benchmark (docs/BENCHMARKS.md, 5 days x 2M rows, 3 seeds, MMoE): day-5 next-day AUC click/like carry
    # 0.7388/0.8459, reset 0.7353/0.8425, retraining on all days 0.7324/0.8385.
    warm_start_optimizer: str = _field("carry", identity="when_set")

    # the Keras dtype policy of the dense layers (tables, logits, losses and the optimizer stay float32):
    # float32 | mixed_bfloat16 | mixed_float16 (mtlrec.training.precision). How the run computes, not what
    # its weights are (float32 either way): a rerun may change it.
    mixed_precision: str = _field("float32", identity="never")
    # the forward pass, losses and gradients as one XLA computation per step (the optimizer's row-sparse
    # updates stay outside); speed only.
    jit_compile: bool = _field(False, identity="never")

    def __post_init__(self) -> None:
        from mtlrec.training.embedding_reset import RESETS  # local: keeps this module TF-free

        names = [t.name for t in self.tasks]
        for name, value in [("learning_rate", self.learning_rate),
                            *((f"loss_weights[{t}]", w) for t, w in self.loss_weights.items())]:
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0. Received: {value}")
        if tuple(names) != tuple(self.model_config.tasks):
            raise ValueError(f"model_config.tasks {self.model_config.tasks} != tasks {names}")
        for name, given in (("loss_weights", self.loss_weights), ("loss_weight_decay", self.loss_weight_decay)):
            unknown = set(given) - set(names)
            if unknown:
                raise ValueError(f"{name} names unknown task(s) {sorted(unknown)}; tasks are {names}")
        _ = self.balancing  # validates the balancing settings
        if self.embedding_reset not in RESETS:
            raise ValueError(f"embedding_reset must be one of {RESETS}. Received: {self.embedding_reset!r}")
        if self.warm_start_optimizer not in WARM_START_OPTIMIZER:
            raise ValueError(f"warm_start_optimizer must be one of {WARM_START_OPTIMIZER}. "
                             f"Received: {self.warm_start_optimizer!r}")
        if self.embedding_optimizer not in EMBEDDING_OPTIMIZERS:
            raise ValueError(f"embedding_optimizer must be one of {tuple(EMBEDDING_OPTIMIZERS)}. "
                             f"Received: {self.embedding_optimizer!r}")
        if self.embedding_learning_rate is not None and not (math.isfinite(self.embedding_learning_rate)
                                                             and self.embedding_learning_rate > 0):
            raise ValueError(f"embedding_learning_rate must be a finite number > 0. "
                             f"Received: {self.embedding_learning_rate}")
        if self.train_order not in TRAIN_ORDERS:
            raise ValueError(f"train_order must be one of {TRAIN_ORDERS}. Received: {self.train_order!r}")
        if not (math.isfinite(self.embedding_decay) and 0 <= self.embedding_decay < 1):
            raise ValueError(f"embedding_decay must be in [0, 1). Received: {self.embedding_decay}")
        if self.task_patience < 0:
            raise ValueError(f"task_patience must be >= 0 (0: off). Received: {self.task_patience}")
        if self.unseen_ids not in UNSEEN_IDS:
            raise ValueError(f"unseen_ids must be one of {UNSEEN_IDS}. Received: {self.unseen_ids!r}")
        if not (math.isfinite(self.oov_dropout) and 0 <= self.oov_dropout < 1):
            raise ValueError(f"oov_dropout must be in [0, 1). Received: {self.oov_dropout}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1. Received: {self.epochs}, {self.batch_size}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}. Received: {self.mixed_precision!r}")
        if self.steps_per_execution < 1:
            raise ValueError(f"steps_per_execution must be >= 1. Received: {self.steps_per_execution}")

    @property
    def fused_embedding_sets(self) -> bool:
        """APLE's and STEM's embedding sets in one table per feature, unless
        per-task stopping must freeze each task's set as a variable apart."""
        return not self.task_patience

    @property
    def balancing(self):
        """The `mtlrec.training.balancing.Balancing` of these settings."""
        from mtlrec.training.balancing import Balancing  # local: keeps this module TF-free

        return Balancing(self.loss_balancing, dict(self.loss_weight_decay), self.dwa_temperature,
                         self.gradnorm_alpha, self.gradnorm_learning_rate)

    def sparse_learning_rate(self) -> float | None:
        """The embedding tables' learning rate (None: the dense one's)."""
        if self.embedding_learning_rate is not None:
            return self.embedding_learning_rate
        return SPARSE_DEFAULT_LEARNING_RATES.get(self.embedding_optimizer)

    def identity(self) -> dict[str, Any]:
        """The settings that define what the weights mean, as plain JSON
        values (by each field's `identity`; see the module doc)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            kind, value = f.metadata.get("identity", "always"), getattr(self, f.name)
            if kind == "always" or (kind == "when_set" and value != f.default):
                out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        out["tasks"] = [str(t) for t in self.tasks]
        del out["model_config"]["tasks"]  # the same names, in `tasks`
        out["loss_weights"] = {t.name: float(self.loss_weights.get(t.name, 1.0)) for t in self.tasks}
        out.update(self.balancing.acting_settings())
        return json.loads(json.dumps(out, default=list))  # tuples -> lists, as read back


# ---- flags <-> fields ------------------------------------------------------------------------------------------

# Fields that are not flags of their own: the model's task names come from --tasks.
_NOT_FLAGS = {"model_config", "tasks@model"}
# Fields a flagfile that reproduces a run leaves out: they act on the invocation, not the run.
_NOT_REPRODUCED = ("overwrite",)


def _fields() -> list[tuple[type, dataclasses.Field]]:
    """(dataclass, field) of every flag-backed field, TrainConfig's first."""
    out = [(TrainConfig, f) for f in dataclasses.fields(TrainConfig) if f.name != "model_config"]
    return out + [(ModelConfig, f) for f in dataclasses.fields(ModelConfig) if f.name != "tasks"]


def flag_default(name: str) -> Any:
    """The default of the field behind flag `--name`, as absl takes it
    (lists as lists of strings)."""
    for _, f in _fields():
        if f.name == name:
            if f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            elif f.default is dataclasses.MISSING:
                raise KeyError(f"--{name} has no default in the config")
            else:
                value = f.default
            if isinstance(value, dict):  # task=number lists
                return [f"{k}={v!r}" for k, v in value.items()]
            return [str(v) for v in value] if isinstance(value, tuple) else value
    raise KeyError(f"no config field for --{name}")


def _ints(name: str, values: list[str]) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in values if x != "")
    except ValueError as e:
        raise ValueError(f"--{name}={','.join(values)}: expected integers") from e


def _per_task(name: str, values: list[str], tasks: tuple[TaskSpec, ...]) -> tuple[float, ...]:
    """`task=number,...` for every task, in task order (empty: none given)."""
    given = parse_task_floats(values, name)
    if not given:
        return ()
    missing = [t.name for t in tasks if t.name not in given]
    if missing:
        raise ValueError(f"--{name}: no value for task(s) {missing}")
    return tuple(given[t.name] for t in tasks)


def _from_flag(name: str, kind: str, value: Any, tasks: tuple[TaskSpec, ...]) -> Any:
    if kind == "tuple[TaskSpec, ...]":
        return tasks
    if kind == "dict[str, float]":
        return parse_task_floats(value, name)
    if kind == "tuple[int, ...]":
        return _ints(name, value)
    if kind == "tuple[float, ...]":  # one value per task (dlen_alpha)
        return _per_task(name, value, tasks)
    if kind == "tuple[str, ...]":
        return tuple(value)
    return value


def config_from_flag_values(values: Mapping[str, Any]) -> TrainConfig:
    """A TrainConfig from flag values by flag name (as absl holds them:
    lists of strings for list flags). Flags not given take the field's
    default; `model`, `model_dir`, `data` and `tasks` are needed."""
    tasks = parse_tasks(values["tasks"])
    kwargs: dict[type, dict[str, Any]] = {TrainConfig: {}, ModelConfig: {"tasks": tuple(t.name for t in tasks)}}
    for cls, f in _fields():
        if f.name in values:
            kwargs[cls][f.name] = _from_flag(f.name, str(f.type), values[f.name], tasks)
    return TrainConfig(**kwargs[TrainConfig], model_config=ModelConfig(**kwargs[ModelConfig]))


def _to_flag(name: str, kind: str, value: Any, tasks: tuple[TaskSpec, ...]) -> str | None:
    if value is None or (kind == "dict[str, float]" and not value):
        return None  # the flag's default
    if kind == "tuple[TaskSpec, ...]":
        text = ",".join(str(t) for t in value)
    elif kind == "dict[str, float]":
        text = ",".join(f"{k}={v!r}" for k, v in value.items())
    elif kind == "tuple[float, ...]":
        text = ",".join(f"{t.name}={v!r}" for t, v in zip(tasks, value))
    elif isinstance(value, tuple):
        text = ",".join(str(v) for v in value)
    else:
        text = repr(value) if isinstance(value, float) else str(value)
    return f"--{name}={text}"


def config_to_flags(config: TrainConfig) -> list[str]:
    """`mtlrec-train` flags that reproduce `config` (`config_from_flag_values`
    of them gives it back)."""
    out = []
    for cls, f in _fields():
        if f.name in _NOT_REPRODUCED:
            continue
        value = getattr(config.model_config if cls is ModelConfig else config, f.name)
        flag = _to_flag(f.name, str(f.type), value, config.tasks)
        if flag is not None:
            out.append(flag)
    return out

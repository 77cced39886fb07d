"""What the data and the models are: the dataset schema (`Schema` of
`FeatureSpec`s and `LabelSpec`s, Tenrec's), the tasks (`TaskSpec`: a label
column, a condition, a weight) and the architecture (`ModelConfig`).

No absl and no TensorFlow here: the schema is shared by the offline pipeline
(`mtlrec.pipelines`), the tf.data reader and the models. A training run's
own settings are `mtlrec.training.config.TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

FEATURE_KINDS = ("id", "categorical", "numeric", "sequence")
LABEL_KINDS = ("binary", "regression")


def did_you_mean(value: str, choices, prefix: str | None = None) -> str:
    """" (did you mean 'mmoe'?)" for the choice closest to a mistyped
    `value` (" (did you mean --tasks?)" with prefix "--"), or "" when none
    is close."""
    import difflib

    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {close[0]!r}?)" if prefix is None else f" (did you mean {prefix}{close[0]}?)"


def _check_types(what: str, obj: Any, **types: Any) -> None:
    """Schema JSON values of the wrong type (`"min_count": "5"`) fail here,
    naming the field, instead of deep inside a run."""
    for field, expected in types.items():
        value = getattr(obj, field)
        allowed = expected if isinstance(expected, tuple) else (expected,)
        if isinstance(value, bool) or not isinstance(value, allowed):
            names = " or ".join("null" if t is type(None) else {"str": "a string", "int": "an integer"}[t.__name__]
                                for t in allowed)
            raise ValueError(f"{what}: {field} must be {names}. Received: {field}={value!r}")


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One model input.

    Args:
        name: feature name (for scalar kinds also the CSV column).
        kind: "id" (non-negative integer ids), "categorical" (strings with a
            vocabulary built from the training split), "numeric" (float,
            standardised with training-split mean/std) or "sequence"
            (fixed-length integer ids spread over several CSV columns).
        columns: CSV columns of a sequence feature, in order.
        vocab_from: the id feature whose vocabulary a sequence shares.
        hash_buckets: id features only: hash ids into this many buckets
            instead of sizing the table from the largest id.
        min_count: categorical only: values seen fewer times in the
            training split go to the out-of-vocabulary bucket.
    """

    name: str
    kind: str
    columns: tuple[str, ...] = ()
    vocab_from: str | None = None
    hash_buckets: int | None = None
    min_count: int = 1

    def __post_init__(self) -> None:
        _check_types(f"Feature '{self.name}'", self, name=str, kind=str, vocab_from=(str, type(None)),
                     hash_buckets=(int, type(None)), min_count=int)
        if self.min_count < 1:
            raise ValueError(f"Feature '{self.name}': min_count must be >= 1. Received: {self.min_count}")
        if self.kind not in FEATURE_KINDS:
            raise ValueError(
                f"Feature '{self.name}': kind must be one of {FEATURE_KINDS}. "
                f"Received: kind={self.kind!r}"
            )
        if self.kind == "sequence":
            if not self.columns:
                raise ValueError(f"Sequence feature '{self.name}' needs `columns`.")
        elif self.columns and tuple(self.columns) != (self.name,):
            raise ValueError(
                f"Feature '{self.name}' of kind {self.kind!r} reads the column of "
                f"its own name. Received: columns={self.columns!r}"
            )
        if self.hash_buckets is not None and (self.kind != "id" or self.hash_buckets < 1):
            raise ValueError(
                f"Feature '{self.name}': hash_buckets needs kind 'id' and a value >= 1. "
                f"Received: kind={self.kind!r}, hash_buckets={self.hash_buckets}"
            )
        object.__setattr__(self, "columns", tuple(self.columns) or (self.name,))

    @property
    def is_integer(self) -> bool:
        return self.kind in ("id", "sequence")


@dataclasses.dataclass(frozen=True)
class LabelSpec:
    """A column observed after the exposure: a target, never a model input.

    `kind="binary"` columns must hold 0 or 1; `"regression"` columns hold any
    number (Tenrec's `watching_times`, which leaks click, is one).
    """

    name: str
    kind: str = "binary"

    def __post_init__(self) -> None:
        _check_types(f"Label '{self.name}'", self, name=str, kind=str)
        if self.kind not in LABEL_KINDS:
            raise ValueError(
                f"Label '{self.name}': kind must be one of {LABEL_KINDS}. "
                f"Received: kind={self.kind!r}"
            )


@dataclasses.dataclass(frozen=True)
class Schema:
    """The columns of a dataset: inputs, labels, and columns to drop."""

    features: tuple[FeatureSpec, ...]
    labels: tuple[LabelSpec, ...]
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "ignore", tuple(self.ignore))
        seen: set[str] = set()
        for col in self.columns:
            if col in seen:
                raise ValueError(f"Schema names column '{col}' twice.")
            seen.add(col)
        names = {f.name for f in self.features}
        for f in self.features:
            if f.vocab_from is not None:
                if f.kind != "sequence":
                    raise ValueError(f"Feature '{f.name}': only sequences take vocab_from.")
                src = self.feature(f.vocab_from) if f.vocab_from in names else None
                if src is None or src.kind != "id":
                    raise ValueError(
                        f"Sequence '{f.name}' shares the vocabulary of '{f.vocab_from}', "
                        "which must be an id feature of the schema."
                    )
        if not self.labels:
            raise ValueError("A schema needs at least one label column.")

    @property
    def columns(self) -> tuple[str, ...]:
        """Every CSV column the schema expects, inputs first."""
        cols: list[str] = []
        for f in self.features:
            cols.extend(f.columns)
        cols.extend(label.name for label in self.labels)
        cols.extend(self.ignore)
        return tuple(cols)

    def feature(self, name: str) -> FeatureSpec:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"No feature named '{name}' in the schema.")

    def label(self, name: str) -> LabelSpec:
        for label in self.labels:
            if label.name == name:
                return label
        raise KeyError(
            f"No label column named '{name}'. Labels: {[x.name for x in self.labels]}"
        )

    def vocab_owner(self, name: str) -> str:
        """The feature whose vocabulary `name` uses (itself unless shared)."""
        f = self.feature(name)
        return f.vocab_from or f.name

    def to_json(self) -> dict[str, Any]:
        return {
            "features": [
                {k: v for k, v in dataclasses.asdict(f).items() if v not in (None, ())}
                | {"columns": list(f.columns)}
                for f in self.features
            ],
            "labels": [dataclasses.asdict(label) for label in self.labels],
            "ignore": list(self.ignore),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Schema:
        try:
            features = tuple(
                FeatureSpec(**{**f, "columns": tuple(f.get("columns", ()))})
                for f in obj["features"]
            )
            labels = tuple(LabelSpec(**label) for label in obj["labels"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"Malformed schema JSON: {e}") from e
        return cls(features, labels, tuple(obj.get("ignore", ())))


def tenrec_schema() -> Schema:
    """The preset for Tenrec's `ctr_data_1M.csv` (QK-video).

    `watching_times` is observed after the exposure and is > 0 only when
    click = 1, so it is kept as a regression label and never fed to a model.
    """
    return Schema(
        features=(
            FeatureSpec("user_id", "id"),
            FeatureSpec("item_id", "id"),
            FeatureSpec("video_category", "id"),
            FeatureSpec("gender", "id"),
            FeatureSpec("age", "id"),
            FeatureSpec(
                "hist",
                "sequence",
                columns=tuple(f"hist_{i}" for i in range(1, 11)),
                vocab_from="item_id",
            ),
        ),
        labels=(
            LabelSpec("click"),
            LabelSpec("follow"),
            LabelSpec("like"),
            LabelSpec("share"),
            LabelSpec("watching_times", "regression"),
        ),
    )


TENREC_HEADER = (
    "user_id,item_id,click,follow,like,share,video_category,watching_times,"
    "gender,age," + ",".join(f"hist_{i}" for i in range(1, 11))
).split(",")


def load_schema(spec: str) -> Schema:
    """`"tenrec"` for the preset, otherwise a path to a schema JSON file."""
    if spec == "tenrec":
        return tenrec_schema()
    from mtlrec.io import open_text  # local: keeps this module TF-free

    try:
        with open_text(spec) as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{spec}:{e.lineno}:{e.colno}: invalid schema JSON: {e.msg}") from e
    except FileNotFoundError as e:
        raise ValueError(f"Schema file not found: {spec} (expected 'tenrec' or a JSON path)") from e
    return Schema.from_json(obj)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What one task trains on: a label column, a condition and a weight.

    Args:
        name: task (and model output) name.
        label: label column; defaults to `name`.
        given: a binary label column the task is conditioned on: rows where
            it is 0 get sample weight 0 (like given click).
        weight: a column multiplied into the sample weight.
    """

    name: str
    label: str | None = None
    given: str | None = None
    weight: str | None = None

    def __post_init__(self) -> None:
        if self.label is None:
            object.__setattr__(self, "label", self.name)

    @classmethod
    def parse(cls, text: str) -> TaskSpec:
        """`name[=label][|given][*weight]`, e.g. `like|click`."""
        weight = given = None
        if "*" in text:
            text, weight = text.split("*", 1)
        if "|" in text:
            text, given = text.split("|", 1)
        name, _, label = text.partition("=")
        if not name:
            raise ValueError(f"Empty task name in {text!r}")
        return cls(name.strip(), (label or name).strip(), given and given.strip(),
                   weight and weight.strip())

    def __str__(self) -> str:
        """The task as written in --tasks (the inverse of `parse`)."""
        return (self.name + (f"={self.label}" if self.label != self.name else "")
                + (f"|{self.given}" if self.given else "") + (f"*{self.weight}" if self.weight else ""))


def parse_tasks(text: str | list[str]) -> tuple[TaskSpec, ...]:
    items = text.split(",") if isinstance(text, str) else list(text)
    tasks = tuple(TaskSpec.parse(t) for t in items if t.strip())
    if len({t.name for t in tasks}) != len(tasks):
        raise ValueError(f"Task names must be unique. Received: {text!r}")
    return tasks


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture settings shared by the model builders.

    Each builder reads the fields it uses: `bottom_units` (Shared-Bottom),
    `num_experts` (OMoE, MMoE), `num_task_experts`/`num_shared_experts`/
    `num_levels` (CGC, PLE); all use the embedding, expert and tower widths.
    """

    tasks: tuple[str, ...]
    embedding_dim: int = 16
    embedding_l2: float = 0.0
    dropout: float = 0.0
    bottom_units: tuple[int, ...] = (128, 64)
    expert_units: tuple[int, ...] = (64,)
    num_experts: int = 4
    num_task_experts: int = 1
    num_shared_experts: int = 2
    num_levels: int = 2
    tower_units: tuple[int, ...] = (32,)
    # APLE: asymmetric multi-embedding widths (cycled over tasks) and rank.
    ame_task_dims: tuple[int, ...] = (32, 128)
    ame_shared_dim: int = 64
    ame_rank: int = 8
    # DLEN: alpha_t bounds P(t|~UP); empty -> dlen_alpha_scale x positive rate.
    dlen_alpha: tuple[float, ...] = ()
    dlen_alpha_scale: float = 0.3
    dlen_hidden_units: tuple[int, ...] = (64, 32)
    # ESCM2: weight of the counterfactual risk and the propensity floor.
    escm2_lambda_cf: float = 0.1
    escm2_clip: float = 0.05
    # AITM: weight of the behavioural expectation calibrator.
    aitm_beta: float = 0.6

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("A model needs at least one task.")
        if self.dlen_alpha and len(self.dlen_alpha) != len(self.tasks):
            raise ValueError(
                f"dlen_alpha needs one value per task {self.tasks}. Received: {self.dlen_alpha}"
            )
        for name in ("bottom_units", "expert_units", "tower_units", "tasks", "ame_task_dims",
                     "dlen_alpha", "dlen_hidden_units"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.num_levels < 1:
            raise ValueError(f"num_levels must be >= 1. Received: num_levels={self.num_levels}")


def parse_task_floats(values: list[str], flag: str) -> dict[str, float]:
    """`["click=1", "like=0.5"]` -> `{"click": 1.0, "like": 0.5}`."""
    out = {}
    for item in values:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"--{flag}: {item!r} is not task=number")
    return out

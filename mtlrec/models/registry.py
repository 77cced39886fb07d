"""Name -> builder registry and the pieces every builder shares."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import keras

from mtlrec.config import ModelConfig, Schema
from mtlrec.layers.embedding import FeatureEmbedding, feature_specs


@dataclasses.dataclass
class BuildContext:
    """What a builder gets: the inputs, the feature settings, the config."""

    inputs: dict[str, keras.KerasTensor]
    features: list[dict[str, Any]]
    config: ModelConfig
    fused_embedding_sets: bool = True  # models of several embedding sets keep them in one table per feature

    def embed(self) -> keras.KerasTensor:
        """The standard single embedding set (width `embedding_dim`)."""
        c = self.config
        return FeatureEmbedding(self.features, c.embedding_dim, l2=c.embedding_l2, name="embedding")(self.inputs)


Builder = Callable[[BuildContext], dict]
MODELS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    def wrap(fn: Builder) -> Builder:
        MODELS[name] = fn
        return fn

    return wrap


def model_inputs(schema: Schema) -> dict[str, keras.KerasTensor]:
    """One `keras.Input` per input feature, typed as the reader yields it."""
    inputs = {}
    for f in schema.features:
        if f.kind == "sequence":
            inputs[f.name] = keras.Input((len(f.columns),), dtype="int64", name=f.name)
        elif f.kind == "categorical":
            inputs[f.name] = keras.Input((), dtype="string", name=f.name)
        elif f.kind == "numeric":
            inputs[f.name] = keras.Input((), dtype="float32", name=f.name)
        else:
            inputs[f.name] = keras.Input((), dtype="int64", name=f.name)
    return inputs


def build_model(name: str, manifest, config: ModelConfig, task_labels: dict[str, str] | None = None,
                unseen_to_oov: Sequence[str] = (), fused_embedding_sets: bool = True) -> keras.Model:
    """A functional model: raw features in, a dict of probabilities out.

    Outputs are keyed by task name (in `config.tasks` order); builders may
    add named auxiliary outputs (e.g. ESMM's conditional probabilities,
    DLEN's `p_up`). `task_labels` maps task names to label columns where
    they differ (DLEN's default alpha uses the label's positive rate).
    `unseen_to_oov`: id features whose ids unseen in training read the
    out-of-vocabulary row (`mtlrec.layers.embedding.set_seen_ids`).
    `fused_embedding_sets`: APLE's and STEM's embedding sets as column
    blocks of one table per feature (faster, the same outputs); False gives
    each task's set variables of its own (per-task early stopping freezes
    them). See `AsymmetricMultiEmbedding`.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Known: {sorted(MODELS)}")
    if not config.dlen_alpha:
        rates = manifest.splits["train"]["positive_rate"]
        label = {t: t for t in config.tasks} | dict(task_labels or {})
        alpha = tuple(min(1.0, max(1e-4, config.dlen_alpha_scale * rates.get(label[t], 0.0))) for t in config.tasks)
        config = dataclasses.replace(config, dlen_alpha=alpha)
    inputs = model_inputs(manifest.schema)
    outputs = MODELS[name](BuildContext(inputs, feature_specs(manifest, unseen_to_oov), config, fused_embedding_sets))
    missing = [t for t in config.tasks if t not in outputs]
    if missing:
        raise RuntimeError(f"Builder {name!r} gave no output for task(s) {missing}")
    return keras.Model(inputs, outputs, name=name)

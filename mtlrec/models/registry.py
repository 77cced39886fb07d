"""Name -> builder registry and the pieces every builder shares."""

from __future__ import annotations

from collections.abc import Callable

import keras

from mtlrec.config import ModelConfig, Schema
from mtlrec.layers.embedding import FeatureEmbedding, feature_specs

Builder = Callable[[dict, keras.KerasTensor, ModelConfig], dict]
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


def build_model(name: str, manifest, config: ModelConfig) -> keras.Model:
    """A functional model: raw features in, a dict of probabilities out.

    Outputs are keyed by task name (in `config.tasks` order); builders may
    add named auxiliary outputs (e.g. ESMM's conditional probabilities).
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Known: {sorted(MODELS)}")
    inputs = model_inputs(manifest.schema)
    embedding = FeatureEmbedding(
        feature_specs(manifest), config.embedding_dim, l2=config.embedding_l2, name="embedding"
    )
    x = embedding(inputs)
    outputs = MODELS[name](inputs, x, config)
    missing = [t for t in config.tasks if t not in outputs]
    if missing:
        raise RuntimeError(f"Builder {name!r} gave no output for task(s) {missing}")
    return keras.Model(inputs, outputs, name=name)

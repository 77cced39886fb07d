"""mtlrec.training.config: TrainConfig's checks, identity marks and the flag <-> field mapping."""

import dataclasses
import subprocess
import sys

import pytest

from mtlrec.config import ModelConfig, TaskSpec, parse_tasks
from mtlrec.training.config import (
    IDENTITY,
    TrainConfig,
    config_from_flag_values,
    config_to_flags,
    flag_default,
)


def _values(**kw):
    return {"model": "ple", "model_dir": "runs/x", "data": "data/x", "tasks": ["click", "like|click", "cvr=follow*w"],
            **kw}


def test_task_spec_prints_as_it_parses():
    for text in ("click", "like|click", "cvr=follow|click", "like*w", "cvr=follow|click*w"):
        assert str(TaskSpec.parse(text)) == text
        assert TaskSpec.parse(str(TaskSpec.parse(text))) == TaskSpec.parse(text)


def test_every_field_is_marked_with_its_identity_kind():
    kinds = {f.name: f.metadata.get("identity") for f in dataclasses.fields(TrainConfig)}
    assert set(kinds.values()) <= set(IDENTITY) and None not in kinds.values()
    assert {k for k, v in kinds.items() if v == "never"} == {
        "model_dir", "data", "epochs", "train_steps", "patience", "eval_batch_size", "devices", "tensorboard",
        "verbose", "overwrite", "test_each_epoch", "steps_per_execution", "mixed_precision", "jit_compile"}


def test_flags_give_the_config_and_the_config_gives_the_flags_back():
    config = config_from_flag_values(_values(
        loss_weights=["like=0.5"], loss_balancing="ple_schedule", loss_weight_decay=["like=0.99"], epochs=3,
        expert_units=["32", "16"], tower_units=[], dlen_alpha=["click=0.1", "like=0.2", "cvr=0.3"],
        devices=["/cpu:0", "/cpu:1"], embedding_learning_rate=0.5, seed=4, overwrite=True))
    assert config.tasks == parse_tasks("click,like|click,cvr=follow*w")
    assert config.loss_weights == {"like": 0.5} and config.loss_weight_decay == {"like": 0.99}
    assert config.model_config.expert_units == (32, 16) and config.model_config.tower_units == ()
    assert config.model_config.dlen_alpha == (0.1, 0.2, 0.3) and config.devices == ("/cpu:0", "/cpu:1")
    assert config.model_config.tasks == ("click", "like", "cvr") and config.seed == 4
    flags = config_to_flags(config)
    assert "--tasks=click,like|click,cvr=follow*w" in flags and "--expert_units=32,16" in flags
    assert "--dlen_alpha=click=0.1,like=0.2,cvr=0.3" in flags and "--tower_units=" in flags
    assert not [f for f in flags if f.startswith("--overwrite")]  # acts on the invocation, not the run
    # mtlrec-train's own flags, parsed by absl, give the same config back.
    code = ("import sys\nfrom absl import flags\nfrom mtlrec.cli import train as cli\n"
            "flags.FLAGS(['mtlrec-train', *sys.argv[1:]])\nprint(repr(cli.config_from_flags()))")
    res = subprocess.run([sys.executable, "-c", code, *flags], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == repr(dataclasses.replace(config, overwrite=False))


def test_flag_values_of_the_wrong_kind_are_named():
    with pytest.raises(ValueError, match=r"--expert_units=64,x: expected integers"):
        config_from_flag_values(_values(expert_units=["64", "x"]))
    with pytest.raises(ValueError, match=r"--dlen_alpha: no value for task\(s\) \['cvr'\]"):
        config_from_flag_values(_values(dlen_alpha=["click=0.1", "like=0.2"]))
    with pytest.raises(ValueError, match="--loss_weights: 'like' is not task=number"):
        config_from_flag_values(_values(loss_weights=["like"]))


def test_flag_defaults_are_the_field_defaults():
    assert flag_default("epochs") == 1 and flag_default("loss_weights") == []
    assert flag_default("expert_units") == ["64"] and flag_default("ame_task_dims") == ["32", "128"]
    assert flag_default("embedding_learning_rate") is None
    with pytest.raises(KeyError):
        flag_default("tasks")


def test_bad_settings_stop_the_config():
    model = ModelConfig(tasks=("click",))
    base = dict(model="mmoe", model_dir="x", data="y", tasks=parse_tasks("click"), model_config=model)
    with pytest.raises(ValueError, match="embedding_reset must be one of"):
        TrainConfig(**base, embedding_reset="always")
    with pytest.raises(ValueError, match=r"loss_weights names unknown task\(s\) \['like'\]"):
        TrainConfig(**base, loss_weights={"like": 1.0})
    with pytest.raises(ValueError, match="model_config.tasks"):
        TrainConfig(**{**base, "model_config": ModelConfig(tasks=("like",))})

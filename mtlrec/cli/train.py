"""mtlrec-train: train, evaluate, checkpoint a multi-task model.

  mtlrec-train --flagfile=experiments/mmoe.flags --model_dir=runs/mmoe
  mtlrec-train --model=ple --data=data/tenrec --tasks=click,like --epochs=3

Without --data, a generated Tenrec-shaped log is prepared once (cached
under $MTLREC_CACHE, default ~/.cache/mtlrec, as synthetic-<rows>-seed0-ordered/)
and used: time-ordered, split by time (--synthetic_split=hash: the older
random rows and hash split, synthetic-<rows>-seed0/).

Tasks, in funnel order: name[=label][|given][*weight]. `click` trains on the
click column; `like|click` trains like on clicked rows only (weight 0
elsewhere); `cvr=follow|click` names the task cvr and reads column follow;
`like*w` multiplies the sample weight by column w. Quote such a list on a
shell command line (--tasks='click,like|click'): | and * are shell characters.

A rerun into the same --model_dir resumes; other settings stop with the
differences (--overwrite starts over). Outputs in MODEL_DIR: metrics.json,
run.json, model.keras, checkpoints/, tensorboard/, export/<version>/.
"""

from __future__ import annotations

import fcntl
import json
import os

from absl import flags, logging

from mtlrec import cluster
from mtlrec import io as mio
from mtlrec.cli.common import run
from mtlrec.config import did_you_mean, parse_task_floats
from mtlrec.training.config import config_from_flag_values
from mtlrec.training.config import flag_default as default

# The registry (mtlrec.models.MODELS) imports Keras; help must not. A test keeps the two equal.
MODEL_NAMES = ("shared_bottom", "omoe", "mmoe", "cgc", "ple", "esmm", "escm2_ips", "escm2_dr", "aitm", "stem",
               "aple", "aple_lowrank", "ple_ame", "ple_residual", "mmoe_dlen", "ple_dlen")
_MODEL = flags.DEFINE_string("model", "mmoe", "Model: " + ", ".join(MODEL_NAMES) + ".")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Output directory: checkpoints, metrics.json, model.keras "
                                 "(default: runs/<model>).")
_DATA = flags.DEFINE_string("data", None, "A prepared dataset directory (mtlrec-prepare). Default: generated data.")
_SYNTHETIC_ROWS = flags.DEFINE_integer("synthetic_rows", 200_000, "Rows of the generated default dataset.", lower_bound=1000)
_SYNTHETIC_SPLIT = flags.DEFINE_enum(
    "synthetic_split", "ordered", ["ordered", "hash"],
    "The generated default dataset: ordered, a time-ordered log (history from the log itself, users and items "
    "arriving over time) split by time: train on the first 80%, select on the next 10%, test on the last 10%; "
    "hash, rows drawn independently and split by a row hash (the Tenrec paper's protocol).")
_TASKS = flags.DEFINE_list("tasks", ["click", "like"], "Tasks in funnel order: name[=label][|given][*weight].")
_LOSS_WEIGHTS = flags.DEFINE_list("loss_weights", default("loss_weights"), "Per-task loss weights: task=w,...")
_BALANCING = flags.DEFINE_enum("loss_balancing", default("loss_balancing"), ["fixed", "ple_schedule", "uncertainty", "dwa", "gradnorm",
                                                            "pcgrad"],
                               "How task losses are combined: fixed (--loss_weights), ple_schedule (weights decay "
                               "per step), uncertainty (learned, Kendall 2018), dwa (loss ratios of the last epochs, "
                               "Liu 2019), gradnorm (Chen 2018), pcgrad (gradient surgery on shared parameters, "
                               "Yu 2020). See README 'Balancing the tasks'.")
_DECAY = flags.DEFINE_list("loss_weight_decay", default("loss_weight_decay"), "ple_schedule: per-step decay gamma in (0, 1] of each task's "
                           "weight, task=gamma,... (default 1: no decay).")
_DWA_T = flags.DEFINE_float("dwa_temperature", default("dwa_temperature"), "dwa: softmax temperature T.")
_GN_ALPHA = flags.DEFINE_float("gradnorm_alpha", default("gradnorm_alpha"), "gradnorm: asymmetry alpha.")
_GN_LR = flags.DEFINE_float("gradnorm_learning_rate", default("gradnorm_learning_rate"), "gradnorm: learning rate of the task weights.")
_EMB_RESET = flags.DEFINE_enum("embedding_reset", default("embedding_reset"), ["none", "epoch"],
                               "epoch: re-initialize the embedding tables and their optimizer slots before every "
                               "epoch after the first (MEDA); dense layers keep training. none: never.")
_EMB_OPT = flags.DEFINE_enum("embedding_optimizer", default("embedding_optimizer"), ["lazy_adam", "adagrad", "sgd"],
                             "Update rule of the embedding tables' row-sparse gradients (dense layers: Adam).")
_EMB_LR = flags.DEFINE_float("embedding_learning_rate", default("embedding_learning_rate"), "Learning rate of the embedding tables "
                             "(default: --learning_rate for lazy_adam, 4.0 for adagrad, 20.0 for sgd: measured, "
                             "docs/BENCHMARKS.md).")
_EMB_DECAY = flags.DEFINE_float("embedding_decay", default("embedding_decay"), "Per-step decay d of every embedding row: each "
                                "step every row shrinks by 1-d, in the batch or not (a whole-table decay, applied "
                                "lazily: the step time stays flat in vocabulary size). Rare ids fall towards zero, "
                                "frequent ones keep what their gradients give them. 0: off. See README 'Multi-epoch "
                                "training'.", lower_bound=0.0, upper_bound=0.5)
_TRAIN_ORDER = flags.DEFINE_enum("train_order", default("train_order"), ["shuffled", "stored"],
                                 "shuffled: the train split shuffled every epoch (seeded). stored: read in its "
                                 "stored order (the input's), files one after another, the same every epoch: "
                                 "time order for a log prepared with --order_by=input, or one sorted by its time "
                                 "column. On such a log it gave +0.010 click AUC on the later rows "
                                 "(docs/BENCHMARKS.md).")
_TASK_PATIENCE = flags.DEFINE_integer("task_patience", default("task_patience"), "Per-task early stopping: a task whose validation AUC "
                                      "has not improved for this many epochs gets its own parameters back from its "
                                      "best epoch and frozen; training stops when every task is. 0: off.",
                                      lower_bound=0)
_OOV_DROPOUT = flags.DEFINE_float("oov_dropout", default("oov_dropout"), "Cold start: fraction of training ids (non-hashed id features, "
                                  "e.g. user_id, item_id) sent to the out-of-vocabulary row that unseen ids are "
                                  "scored through, seeded (default 0.02: measured on time-ordered data, docs/BENCHMARKS.md). 0: off.", lower_bound=0.0, upper_bound=0.99)
_OOV_FEATURES = flags.DEFINE_list("oov_features", default("oov_features"), "The id features --oov_dropout acts on (default: every "
                                  "non-hashed id feature with >= 100 ids: users and items, not gender or age).")
_UNSEEN_IDS = flags.DEFINE_enum("unseen_ids", default("unseen_ids"), ["oov", "own_row"],
                                "Ids of users and items (--oov_features) that the train split never holds: oov "
                                "reads the out-of-vocabulary row (trained by --oov_dropout), own_row their own, "
                                "never-trained row. With --oov_dropout: oov.")
_EPOCHS = flags.DEFINE_integer("epochs", default("epochs"), "Epochs.", lower_bound=1)
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", default("train_steps"), "Total training steps (split evenly over epochs).", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", default("batch_size"), "Global batch size.", lower_bound=1)
_SPE = flags.DEFINE_integer("steps_per_execution", default("steps_per_execution"), "Training steps per TensorFlow function call: fewer calls "
                            "from Python and overlapped steps (faster; the same steps).", lower_bound=1)
_EVAL_BATCH = flags.DEFINE_integer("eval_batch_size", default("eval_batch_size"), "Batch size of evaluation.", lower_bound=1)
_LR = flags.DEFINE_float("learning_rate", default("learning_rate"), "Adam learning rate.", lower_bound=0)
_SEED = flags.DEFINE_integer("seed", default("seed"), "Seed of weights and shuffling.")
_MONITOR = flags.DEFINE_string("monitor", default("monitor"), "Validation metric for best epoch/early stopping: auc_mean or <task>/<metric>.")
_PATIENCE = flags.DEFINE_integer("patience", default("patience"), "Epochs without improvement before stopping.", lower_bound=1)
_DEVICES = flags.DEFINE_list("devices", default("devices"), "Devices for MirroredStrategy (default: all GPUs if several).")
_TEST_EACH = flags.DEFINE_bool("test_each_epoch", default("test_each_epoch"), "Also score the test split after every epoch "
                                "(metrics.json history[i].test); the best epoch is still chosen on validation.")
_TENSORBOARD = flags.DEFINE_bool("tensorboard", default("tensorboard"), "Write TensorBoard logs under MODEL_DIR/tensorboard.")
_OVERWRITE = flags.DEFINE_bool("overwrite", default("overwrite"), "Start over in a --model_dir that holds an mtlrec-train run (deletes its checkpoints); never replaces other files.")
_EXPORT = flags.DEFINE_bool("export", True, "Export a SavedModel to MODEL_DIR/export/<version>/ at the end.")
_EXPORT_BASE = flags.DEFINE_string("export_base", None, "Export into this serving base folder instead (the one a "
                                   "running TF Serving watches, that earlier runs exported to): the next version "
                                   "number there, above every version it holds, written whole and renamed into "
                                   "place.")
_WARM_START = flags.DEFINE_string("warm_start", default("warm_start"), "A finished run to continue (daily "
                                  "training): this run starts from its selected weights, dense layers as they "
                                  "were, embedding rows row for row, rows of new ids drawn fresh; the optimizer "
                                  "as --warm_start_optimizer says. Same model, architecture, tasks and schema, on a dataset "
                                  "prepared with mtlrec-prepare --vocab_from=<its dataset>. Recorded as run.json's "
                                  "parent. See README 'Training every day'.")
_WARM_START_OPT = flags.DEFINE_enum("warm_start_optimizer", default("warm_start_optimizer"), ["carry", "reset"],
                                    "With --warm_start: carry (the parent's last checkpoint's Adam moments and step "
                                    "count; rows of new ids start at zero; measured best, docs/BENCHMARKS.md) or "
                                    "reset (fresh moments, step 0).")
_FUSION = flags.DEFINE_list("fusion_weights", [], "Export: score = prod_k p_k^w_k, task=w,... (default 1 per task).")
_VERBOSE = flags.DEFINE_integer("verbose", default("verbose"), "Keras progress: 0 silent, 1 bar, 2 a line per epoch.")
_EMB_DIM = flags.DEFINE_integer("embedding_dim", default("embedding_dim"), "Embedding width.", lower_bound=1)
_EMB_L2 = flags.DEFINE_float("embedding_l2", default("embedding_l2"), "L2 on looked-up embedding rows.", lower_bound=0)
_DROPOUT = flags.DEFINE_float("dropout", default("dropout"), "Dropout in experts, bottoms and towers.", lower_bound=0, upper_bound=0.99)
_BOTTOM = flags.DEFINE_list("bottom_units", default("bottom_units"), "Shared-Bottom MLP widths.")
_EXPERT = flags.DEFINE_list("expert_units", default("expert_units"), "Expert MLP widths.")
_TOWER = flags.DEFINE_list("tower_units", default("tower_units"), "Tower MLP widths (may be empty).")
_NUM_EXPERTS = flags.DEFINE_integer("num_experts", default("num_experts"), "Experts of OMoE/MMoE.", lower_bound=1)
_TASK_EXPERTS = flags.DEFINE_integer("num_task_experts", default("num_task_experts"), "Task-specific experts per task (CGC/PLE).", lower_bound=0)
_SHARED_EXPERTS = flags.DEFINE_integer("num_shared_experts", default("num_shared_experts"), "Shared experts (CGC/PLE).", lower_bound=0)
_LEVELS = flags.DEFINE_integer("num_levels", default("num_levels"), "Extraction levels (PLE).", lower_bound=1)
_AME_DIMS = flags.DEFINE_list("ame_task_dims", default("ame_task_dims"), "APLE: embedding width per task (cycled over tasks).")
_AME_SHARED = flags.DEFINE_integer("ame_shared_dim", default("ame_shared_dim"), "APLE: width of the shared embedding set.", lower_bound=1)
_AME_RANK = flags.DEFINE_integer("ame_rank", default("ame_rank"), "aple_lowrank: rank of each task's map.", lower_bound=1)
_DLEN_ALPHA = flags.DEFINE_list("dlen_alpha", default("dlen_alpha"), "DLEN: bound of P(task|~UP) per task (task=a,...); default: scale x positive rate.")
_DLEN_SCALE = flags.DEFINE_float("dlen_alpha_scale", default("dlen_alpha_scale"), "DLEN: default alpha = scale x the task's training positive rate.", lower_bound=0.001, upper_bound=1)
_ESCM2_LAMBDA = flags.DEFINE_float("escm2_lambda_cf", default("escm2_lambda_cf"), "ESCM2: weight of the counterfactual risk.", lower_bound=0)
_ESCM2_CLIP = flags.DEFINE_float("escm2_clip", default("escm2_clip"), "ESCM2: propensity floor (clip) of the inverse weights.", lower_bound=1e-4, upper_bound=1)
_AITM_BETA = flags.DEFINE_float("aitm_beta", default("aitm_beta"), "AITM: weight of the behavioural expectation calibrator.", lower_bound=0)
_WORKER_HOSTS = flags.DEFINE_list("worker_hosts", [], "Multi-worker training without TF_CONFIG: every worker's host:port, the same list on each (docs/DISTRIBUTED.md).")
_TASK_INDEX = flags.DEFINE_integer("task_index", 0, "With --worker_hosts: this worker's position in the list (0 is the chief, which writes MODEL_DIR).", lower_bound=0)
_INTRA = flags.DEFINE_integer("intra_op_threads", -1, "Threads one TensorFlow op may use: -1 auto (1 on hosts of "
                              "up to 8 cores, where it trains faster; else TensorFlow's choice), 0 TensorFlow's choice.",
                              lower_bound=-1)
_INTER = flags.DEFINE_integer("inter_op_threads", 0, "TensorFlow ops run at once (0: TensorFlow's choice, the cores).",
                              lower_bound=0)
_PRECISION = flags.DEFINE_enum("mixed_precision", default("mixed_precision"),
                               ["float32", "mixed_bfloat16", "mixed_float16"],
                               "Dtype policy of the dense layers: mixed_bfloat16 computes experts, gates and towers in "
                               "bfloat16 (fast on CPUs with avx512_bf16 or AMX, and on GPUs); mixed_float16 for GPUs "
                               "(loss scaling, one device). Tables, logits, losses and the optimizer stay float32.")
_JIT = flags.DEFINE_bool("jit_compile", default("jit_compile"), "Compile each step's forward pass, losses and gradients "
                         "with XLA (the optimizer's row-sparse updates stay outside it).")
_DLEN_HIDDEN = flags.DEFINE_list("dlen_hidden_units", default("dlen_hidden_units"), "DLEN: hidden-state network widths.")


def default_data(rows: int, seed: int = 0, split: str = "ordered") -> str:
    """The generated default dataset, prepared once and cached: a
    time-ordered log split by time (`split="ordered"`), or independent rows
    split by hash (`"hash"`)."""
    from mtlrec.config import tenrec_schema
    from mtlrec.pipelines.prepare import PrepareConfig, prepare

    if split not in ("ordered", "hash"):
        raise ValueError(f"--synthetic_split={split}: expected ordered or hash")
    cache = os.environ.get("MTLREC_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "mtlrec"))
    path = os.path.join(cache, f"synthetic-{rows}-seed{seed}" + ("-ordered" if split == "ordered" else ""))
    if os.path.exists(os.path.join(path, "manifest.json")):
        return path
    os.makedirs(cache, exist_ok=True)
    # Several processes may ask at once (the workers of mtlrec-launch): one prepares, the others wait.
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(path, "manifest.json")):
            logging.info("preparing the generated default dataset (%d rows) at %s", rows, path)
            prepare(PrepareConfig(output=path, schema=tenrec_schema(), synthetic_rows=rows, seed=seed, overwrite=True,
                                  order_by="input" if split == "ordered" else None))
    return path


def check_model(name: str) -> None:
    """Refuses an unknown --model, suggesting the closest name (no TensorFlow
    needed: MODEL_NAMES mirrors the registry)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"--model={name}: unknown{did_you_mean(name, MODEL_NAMES)}; expected one of "
                         f"{', '.join(MODEL_NAMES)}")


def check_data(path: str | None) -> None:
    """Refuses a local --data that is not a prepared dataset before
    TensorFlow loads (a remote one is read, and checked, by the run)."""
    if path is None or mio.is_remote(path):
        return
    local = mio.local_path(path)
    if os.path.isfile(os.path.join(local, "manifest.json")) or (local.endswith(".json") and os.path.isfile(local)):
        return
    if not os.path.exists(local):
        hint = (" (a prepare into it was interrupted: rerun it)" if os.path.isdir(local.rstrip("/") + ".incomplete")
                else "")
        raise FileNotFoundError(f"--data={path}: no such folder{hint}; make one with mtlrec-prepare "
                                f"--input=FILE.csv --output={path}, or leave --data out to train on generated data")
    raise FileNotFoundError(f"--data={path} holds no manifest.json: not a dataset made by mtlrec-prepare "
                            "(an interrupted prepare leaves none)")


def command_flags() -> dict[str, object]:
    """mtlrec-train's flag values (absl's and TensorFlow's own left out)."""
    return {f.name: f.value for f in flags.FLAGS.get_flags_for_module(__name__)}


def config_from_flags():
    """The TrainConfig of the flags (`mtlrec.training.config` maps them to fields)."""
    values = command_flags()
    values["model_dir"] = _MODEL_DIR.value or os.path.join("runs", _MODEL.value)
    values["data"] = _DATA.value or default_data(_SYNTHETIC_ROWS.value, split=_SYNTHETIC_SPLIT.value)
    return config_from_flag_values(values)


def _finished_epochs(model_dir: str) -> int | None:
    """The epochs of the finished run in `model_dir` (None when there is none)."""
    from mtlrec.rundir import read_status

    path = mio.join(model_dir, "metrics.json")
    if not mio.exists(path) or read_status(model_dir) != "finished":
        return None
    return mio.read_json(path).get("epochs_run")


def join_cluster() -> cluster.Worker:
    """This process's place (TF_CONFIG, or --worker_hosts/--task_index) and
    the devices TensorFlow must have before it starts: the logical CPUs of
    --devices, or MultiWorkerMirroredStrategy when there are several workers."""
    from mtlrec.training import make_strategy, set_op_threads, split_cpu

    set_op_threads(_INTRA.value, _INTER.value)  # before TensorFlow starts, like the devices
    if _WORKER_HOSTS.value:
        os.environ["TF_CONFIG"] = cluster.tf_config_from_hosts(_WORKER_HOSTS.value, _TASK_INDEX.value)
    worker = cluster.current()
    split_cpu(_DEVICES.value)  # before TensorFlow starts: --devices=/cpu:0,/cpu:1 on a CPU-only machine
    if worker.multi:
        make_strategy(_DEVICES.value)  # MultiWorkerMirroredStrategy must come before any TensorFlow work
    return worker


def main(argv: list[str]) -> int:
    del argv
    check_model(_MODEL.value)  # before TensorFlow loads: a typo answers at once
    check_data(_DATA.value)
    from mtlrec.training import train

    worker = join_cluster()
    config = config_from_flags()
    finished_before = _finished_epochs(config.model_dir)
    metrics = train(config, flags=command_flags())
    if not worker.is_chief:
        print(json.dumps({"model_dir": config.model_dir, **metrics}))
        return 0
    from mtlrec.rundir import read_record, record_export

    base = _EXPORT_BASE.value or mio.join(config.model_dir, "export")
    before = read_record(config.model_dir).get("exported")
    if _EXPORT.value and finished_before == metrics["epochs_run"] and (
            before or (not _EXPORT_BASE.value and mio.exists(base) and mio.listdir(base))):
        logging.info("the run was finished and exported before (%s): trained nothing, exported nothing more "
                     "(mtlrec-export makes another version)", before or base)
    elif _EXPORT.value:
        from mtlrec.export import export_model_dir, warmup_rows

        weights = parse_task_floats(_FUSION.value, "fusion_weights") or None
        logging.info("exporting a SavedModel to %s", base)
        path = export_model_dir(config.model_dir, base, fusion_weights=weights,
                                warmup_rows=warmup_rows(config.model_dir, config.data))
        record_export(config.model_dir, path)
        logging.info("exported %s", path)
    print(json.dumps({"model_dir": config.model_dir, "best_epoch": metrics["best_epoch"],
                      "test": {t: {k: round(v, 4) for k, v in m.items() if k in ("auc", "logloss", "gauc", "calibration")}
                               for t, m in metrics["test"].items() if isinstance(m, dict)},
                      "train_examples_per_sec": round(metrics["train_examples_per_sec"] or 0)}, indent=1))
    logging.info("wrote %s", mio.join(config.model_dir, "metrics.json"))
    return 0


def entry_point() -> None:
    run(main)


if __name__ == "__main__":
    entry_point()

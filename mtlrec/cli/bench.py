"""mtlrec-bench: train models over seeds with their experiments flagfiles, then report.

  mtlrec-bench --models=shared_bottom,mmoe,esmm,ple,aple --seeds=3 --out=bench/aple
  mtlrec-bench --models=mmoe,ple --seeds=2 --data=data/tenrec --epochs=2 --out=bench/quick

Each model trains with experiments/<model>.flags (run from the repository
root, or pass --experiments_dir), then any mtlrec-train flag given here
(--epochs, --tasks, --data, ...), with seeds --seed, --seed+1, ...: one run
per model and seed in OUT/runs/<model>/seed<seed>/, through mtlrec-train
in a process of its own (logs in OUT/logs/). Without --data, the generated
default dataset. Rerunning resumes: finished runs are skipped. The report
(mtlrec-report) goes to OUT/report.md, OUT/report.csv and OUT/figures/.
Runs are not exported unless --export is given.
"""

from __future__ import annotations

import json

from absl import flags

from mtlrec.cli import train as train_cli  # defines the training flags
from mtlrec.cli.common import run

_MODELS = flags.DEFINE_list("models", None, "Models to train: " + ", ".join(train_cli.MODEL_NAMES) + ".",
                            required=True)
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per model (--seed, --seed+1, ...).", lower_bound=1)
_OUT = flags.DEFINE_string("out", None, "Output directory: runs/, logs/, report.md, report.csv, figures/.",
                           required=True)
_EXPERIMENTS = flags.DEFINE_string("experiments_dir", "experiments", "Where <model>.flags are.")

# Set by the bench per run, so not forwarded from its own command line.
_PER_RUN = ("model", "model_dir", "seed", "data")


def train_args() -> list[str]:
    """The mtlrec-train flags given on the command line, as arguments."""
    args = [f.serialize() for f in flags.FLAGS.get_flags_for_module(train_cli.__name__)
            if f.present and f.name not in _PER_RUN]
    if not flags.FLAGS["export"].present:
        args.append("--noexport")
    return args


def main(argv):
    del argv
    from mtlrec.bench import bench

    unknown = sorted(set(_MODELS.value) - set(train_cli.MODEL_NAMES))
    if unknown:
        raise ValueError(f"--models: unknown {unknown}; expected some of {', '.join(train_cli.MODEL_NAMES)}")
    data = flags.FLAGS.data or train_cli.default_data(flags.FLAGS.synthetic_rows, split=flags.FLAGS.synthetic_split)
    seeds = [flags.FLAGS.seed + k for k in range(_SEEDS.value)]
    result = bench(_MODELS.value, seeds, _OUT.value, data, train_args(), _EXPERIMENTS.value)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    if result["failed"]:
        raise ValueError(f"{len(result['failed'])} run(s) failed: {', '.join(result['failed'])} "
                         f"(logs in {_OUT.value}/logs/); the report holds the others. Rerun to retry them")
    return 0


def entry_point() -> None:
    run(main, flag_modules=(train_cli.__name__,))


if __name__ == "__main__":
    entry_point()

"""mtlrec-fuse: search the weights of the served score on the validation split.

  mtlrec-fuse --model_dir=runs/ple --objective=share                 # the AUC of one label
  mtlrec-fuse --model_dir=runs/ple --objective=click=1,like=0.5      # a weighted sum of AUCs
  mtlrec-fuse --model_dir=runs/ctr --model_dir=runs/cvr --objective=click,like --out=fused

`score = prod_k p_k ** w_k` over the runs' tasks; the weights (summing to 1,
multiples of --grid_step) that maximise the objective on the validation
split are written to OUT/fusion.json with the table of every grid point
(OUT/search.csv), and a new SavedModel version whose `score` uses them is
exported: with one run to MODEL_DIR/export (the version after the last),
with several to OUT/export (one signature serving every run). OUT defaults
to the first MODEL_DIR/fusion.
"""

from __future__ import annotations

import json

from absl import flags

from mtlrec.cli.common import run

_MODEL_DIRS = flags.DEFINE_multi_string("model_dir", None, "A finished mtlrec-train run (repeat the flag to fuse "
                                        "several runs: each task from one run).", required=True)
_OBJECTIVE = flags.DEFINE_string("objective", None, "LABEL (AUC of the score against that label column) or "
                                 "LABEL=c,LABEL=c (sum of c * AUC).", required=True)
_OUT = flags.DEFINE_string("out", None, "Folder for fusion.json and search.csv (default: first MODEL_DIR/fusion).")
_STEP = flags.DEFINE_float("grid_step", 0.05, "Grid step of the weights (1/n).")
_DATA = flags.DEFINE_string("data", None, "Prepared dataset whose validation split is searched on "
                            "(default: the runs' training data).")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Base directory of the new export version "
                                  "(default: MODEL_DIR/export for one run, OUT/export for several).")
_VERSION = flags.DEFINE_integer("version", None, "Export version number (default: new, time-based).", lower_bound=0)
_EXPORT = flags.DEFINE_bool("export", True, "Export a SavedModel version with the found weights.")


def main(argv):
    del argv
    from mtlrec.fusion import fuse

    result = fuse(_MODEL_DIRS.value, _OBJECTIVE.value, _OUT.value, _STEP.value, _DATA.value, _EXPORT_DIR.value,
                  _VERSION.value, _EXPORT.value)
    print(json.dumps({k: result[k] for k in ("weights", "value", "equal_weights_value", "alone", "export")
                      if k in result}, indent=1))
    return 0


def entry_point() -> None:
    run(main)


if __name__ == "__main__":
    entry_point()

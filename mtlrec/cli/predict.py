"""mtlrec-predict: batch-score a CSV with an exported SavedModel, streaming.

  mtlrec-predict --export_dir=runs/aple/export --input=new.csv --output=scores.csv --keep_columns=user_id,item_id
"""

from __future__ import annotations

from absl import flags

from mtlrec.cli.common import run

_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "A SavedModel, or a directory of integer versions (the highest is used).", required=True)
_INPUT = flags.DEFINE_string("input", None, "CSV with the model's input columns (extra columns are ignored).", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output CSV: kept columns, then the tasks in task order, then the other outputs (score, ...).", required=True)
_KEEP = flags.DEFINE_list("keep_columns", [], "Input columns copied to the output (e.g. user_id,item_id).")
_CHUNK = flags.DEFINE_integer("chunk_rows", 65536, "Rows scored per batch.", lower_bound=1)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an earlier mtlrec-predict output at --output (never any other file).")


def main(argv):
    del argv
    from mtlrec.predict import predict_csv

    rows = predict_csv(_EXPORT_DIR.value, _INPUT.value, _OUTPUT.value, _KEEP.value, _CHUNK.value,
                       overwrite=_OVERWRITE.value)
    print(f"scored {rows} rows -> {_OUTPUT.value}")
    return 0


def entry_point() -> None:
    run(main)


if __name__ == "__main__":
    entry_point()

"""mtlrec-export: a trained model dir -> a TF Serving SavedModel version.

  mtlrec-export --model_dir=runs/aple                 # -> runs/aple/export/<version>/
  mtlrec-export --model_dir=runs/aple --export_dir=/models/aple --fusion_weights=click=1,like=0.5
"""

from __future__ import annotations

from absl import flags

from mtlrec.cli.common import run
from mtlrec.config import parse_task_floats

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "A finished mtlrec-train directory.", required=True)
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Base directory of versions (default MODEL_DIR/export).")
_FUSION = flags.DEFINE_list("fusion_weights", [], "score = prod_k p_k^w_k: task=w,... (default 1 per task).")
_VERSION = flags.DEFINE_integer("version", None, "Version number (default: new, time-based).", lower_bound=0)
_DATA = flags.DEFINE_string("warmup_data", None, "Prepared dataset for warm-up rows (default: the training data).")


def main(argv):
    del argv
    from mtlrec.export import export_model_dir, warmup_rows

    weights = parse_task_floats(_FUSION.value, "fusion_weights") or None
    path = export_model_dir(_MODEL_DIR.value, _EXPORT_DIR.value, weights, _VERSION.value,
                            warmup_rows(_MODEL_DIR.value, _DATA.value))
    print(path)
    return 0


def entry_point() -> None:
    run(main)


if __name__ == "__main__":
    entry_point()

"""mtlrec-report: compare finished mtlrec-train runs in a table and figures.

  mtlrec-report runs/mmoe runs/ple --out=reports/mmoe_vs_ple
  mtlrec-report bench/aple --out=bench/aple      # every finished run below a folder

Trains nothing: reads each MODEL_DIR's metrics.json and diagnostics.json.
Runs of one model whose settings differ only in --seed are one row (mean
and sample standard deviation). Writes OUT/report.md (the tables, the
figures linked), OUT/report.csv (the same numbers) and OUT/figures/*.png:
test AUC per task, validation learning curves, reliability diagrams, and
the gate weights of the mixture models. Rerunning replaces the report.
"""

from __future__ import annotations

import json

from absl import flags

from mtlrec.cli.common import run

_OUT = flags.DEFINE_string("out", None, "Output directory: report.md, report.csv, figures/.", required=True)


def main(argv):
    from mtlrec.report import write_report

    run_dirs = argv[1:]
    if not run_dirs:
        raise ValueError("no run directories given: mtlrec-report RUN_DIR [RUN_DIR ...] --out=DIR")
    result = write_report(run_dirs, _OUT.value)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    return 0


def entry_point() -> None:
    run(main)


if __name__ == "__main__":
    entry_point()

"""Per-epoch validation and test AUC of benchmarks/multi_epoch.sh's runs.

    python -m benchmarks.multi_epoch_table bench/multi_epoch

Reads OUT/<setting>/runs/<model>/seed*/metrics.json (runs made with
--test_each_epoch) and prints, per model, the mean over seeds of each
task's validation and test AUC after each epoch under each setting, then
the test AUC of the epoch chosen on validation (mean ± std over seeds)
against the plain run's best single epoch.
"""

import glob
import json
import os
import statistics
import sys


def _runs(out):
    runs = {}
    for path in sorted(glob.glob(os.path.join(out, "*", "runs", "*", "seed*", "metrics.json"))):
        setting, _, model = path.split(os.sep)[-5:-2]
        runs.setdefault(model, {}).setdefault(setting, []).append(json.load(open(path)))
    return runs


def _fmt(values):
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main(out):
    for model, settings in _runs(out).items():
        tasks = list(next(iter(settings.values()))[0]["test"])
        tasks = [t for t in tasks if isinstance(next(iter(settings.values()))[0]["test"][t], dict)]
        print(f"\n### {model}\n")
        print("| setting | epoch | " + " | ".join(f"valid {t}" for t in tasks) + " | "
              + " | ".join(f"test {t}" for t in tasks) + " |")
        print("|---|---|" + "---|" * (2 * len(tasks)))
        for setting, runs in settings.items():
            for e in range(max(len(r["history"]) for r in runs)):
                hist = [r["history"][e] for r in runs if len(r["history"]) > e]
                valid = [statistics.mean(h["valid"][t]["auc"] for h in hist) for t in tasks]
                test = [statistics.mean(h["test"][t]["auc"] for h in hist) if all("test" in h for h in hist) else None
                        for t in tasks]
                print(f"| {setting} | {e + 1} | " + " | ".join(f"{v:.4f}" for v in valid) + " | "
                      + " | ".join("" if v is None else f"{v:.4f}" for v in test) + " |")
        print("\n| setting | epochs chosen | " + " | ".join(f"test {t}" for t in tasks) + " |")
        print("|---|---|" + "---|" * len(tasks))
        for setting, runs in settings.items():
            print(f"| {setting} | {', '.join(str(r['best_epoch']) for r in runs)} | "
                  + " | ".join(_fmt([r["test"][t]["auc"] for r in runs]) for t in tasks) + " |")


if __name__ == "__main__":
    main(sys.argv[1])

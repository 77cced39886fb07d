"""Per-epoch validation and test AUC of benchmarks/multi_epoch.sh's runs.

    python -m benchmarks.multi_epoch_table bench/multi_epoch
    python -m benchmarks.multi_epoch_table bench/task_stopping plain6     # gains against plain6

Reads OUT/<setting>/runs/<model>/seed*/metrics.json (runs made with
--test_each_epoch) and prints, per model, the mean over seeds of each
task's validation and test AUC after each epoch under each setting, then
the test AUC of the epoch chosen on validation (mean ± std over seeds),
its gain over the plain runs' best single epoch, and the cold-start rows
(benchmarks.cold_start) with their AUC and calibration.
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
        metrics = json.load(open(path))
        cold = os.path.join(os.path.dirname(path), "cold_start.json")
        metrics["cold_start"] = json.load(open(cold)) if os.path.exists(cold) else None
        runs.setdefault(model, {}).setdefault(setting, []).append(metrics)
    return runs


def _fmt(values):
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main(out, baseline="none"):
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
        if baseline in settings:
            _against_best_single_epoch(settings, tasks, baseline)
        _cold_start(settings, tasks)


def _against_best_single_epoch(settings, tasks, baseline):
    """Each setting's chosen epoch (test AUC, mean over the seeds both have)
    against the plain runs' best single epoch (the epoch whose mean test AUC
    over tasks is highest, mean over seeds): the oracle choice of plain training."""
    plain = settings[baseline]
    epochs = min(len(r["history"]) for r in plain)
    per_epoch = [[statistics.mean(r["history"][e]["test"][t]["auc"] for r in plain) for t in tasks]
                 for e in range(epochs)]
    best = max(range(epochs), key=lambda e: statistics.mean(per_epoch[e]))
    print(f"\nAgainst {baseline} training's best single test epoch ({best + 1}: "
          + " / ".join(f"{v:.4f}" for v in per_epoch[best]) + f"; {len(plain)} seed(s)):\n")
    print("| setting | seeds | " + " | ".join(f"gain test {t}" for t in tasks) + " |")
    print("|---|---|" + "---|" * len(tasks))
    for setting, runs in settings.items():
        gains = [statistics.mean(r["test"][t]["auc"] for r in runs) - per_epoch[best][i] for i, t in enumerate(tasks)]
        print(f"| {setting} | {len(runs)} | " + " | ".join(f"{g:+.4f}" for g in gains) + " |")


def _cold_start(settings, tasks):
    """Test rows whose user or item never occurs in training (benchmarks.cold_start)."""
    if not any(r["cold_start"] for runs in settings.values() for r in runs):
        return
    print("\nCold-start test rows (user or item unseen in training), the chosen epoch's model:\n")
    print("| setting | rows | " + " | ".join(f"{t} AUC | {t} calibration" for t in tasks) + " | warm click AUC |")
    print("|---|---|" + "---|---|" * len(tasks) + "---|")
    for setting, runs in settings.items():
        cold = [r["cold_start"] for r in runs if r["cold_start"]]
        if not cold:
            continue
        cells = []
        for t in tasks:
            cells += [_fmt([c["cold"][t]["auc"] for c in cold]), _fmt([c["cold"][t]["calibration"] for c in cold])]
        print(f"| {setting} | {cold[0]['cold']['rows']} | " + " | ".join(cells) + " | "
              + _fmt([c["warm"][tasks[0]]["auc"] for c in cold]) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:3])  # OUT [baseline setting, default none]

"""mtlrec-bench and mtlrec-report: the numbers, the figures, the gates, TensorBoard."""

import csv
import glob
import json
import os
import statistics

import numpy as np
import pytest

from mtlrec import diagnostics
from mtlrec.config import ModelConfig, parse_tasks
from mtlrec.training import TrainConfig, train
from tests.helpers import run_cli

BENCH_MODELS, BENCH_SEEDS = ("mmoe", "ple"), (0, 1)
SMALL = ["--embedding_dim=4", "--expert_units=8", "--tower_units=4", "--epochs=2", "--train_steps=8",
         "--batch_size=512", "--tasks=click,like"]


@pytest.fixture(scope="module")
def bench_out(small_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    res = run_cli("mtlrec.cli.bench", f"--models={','.join(BENCH_MODELS)}", f"--seeds={len(BENCH_SEEDS)}",
                  f"--data={small_dataset}", f"--out={out}", *SMALL)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


def _metrics(out, model, seed):
    with open(out / "runs" / model / f"seed{seed}" / "metrics.json") as f:
        return json.load(f)


def _csv_rows(path):
    with open(path) as f:
        return {row["model"]: row for row in csv.DictReader(f)}


def test_bench_report_equals_the_runs_metrics(bench_out):
    out, _ = bench_out
    rows = _csv_rows(out / "report.csv")
    assert sorted(rows) == sorted(BENCH_MODELS)
    for model in BENCH_MODELS:
        runs = [_metrics(out, model, s) for s in BENCH_SEEDS]
        assert [m["config"]["seed"] for m in runs] == list(BENCH_SEEDS)
        row = rows[model]
        assert row["runs"] == "2"
        for task in ("click", "like"):
            for metric in ("auc", "logloss", "calibration", "gauc"):
                values = [m["test"][task][metric] for m in runs]
                assert float(row[f"{task}/{metric}_mean"]) == pytest.approx(sum(values) / 2, rel=1e-9)
                assert float(row[f"{task}/{metric}_std"]) == pytest.approx(statistics.stdev(values), rel=1e-9)
        assert float(row["examples_per_sec_mean"]) == pytest.approx(
            statistics.mean(m["train_examples_per_sec"] for m in runs), rel=1e-9)
        assert float(row["params_mean"]) == runs[0]["params"]
        assert float(row["peak_rss_mb_mean"]) > 100  # a TensorFlow process
        # The markdown table shows the same numbers.
        click = [m["test"]["click"]["auc"] for m in runs]
        text = (out / "report.md").read_text()
        assert f"| {model} | 2 | {statistics.mean(click):.4f} ± {statistics.stdev(click):.4f} |" in text


def test_bench_rerun_skips_finished_runs(bench_out, small_dataset):
    out, _ = bench_out
    before = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(out / "runs" / "*" / "*" / "metrics.json"))}
    assert len(before) == 4
    res = run_cli("mtlrec.cli.bench", f"--models={','.join(BENCH_MODELS)}", f"--seeds={len(BENCH_SEEDS)}",
                  f"--data={small_dataset}", f"--out={out}", *SMALL)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stderr.count("finished before, skipped") == 4
    assert {p: os.stat(p).st_mtime_ns for p in before} == before
    # Other settings into the same --out would not compare: refused before training.
    res = run_cli("mtlrec.cli.bench", "--models=mmoe", "--seeds=1", f"--data={small_dataset}", f"--out={out}",
                  *SMALL, "--learning_rate=0.01")
    assert res.returncode == 1 and "holds a bench with other settings" in res.stderr


def _image(path):
    import matplotlib.image

    return matplotlib.image.imread(path)


def test_figures_are_real_pictures(bench_out):
    out, _ = bench_out
    names = ["test_auc", "learning_curves", "reliability", "gates_mmoe", "gates_ple"]
    assert sorted(os.listdir(out / "figures")) == sorted(f"{n}.png" for n in names)
    text = (out / "report.md").read_text()
    sizes = {}
    for name in names:
        img = _image(out / "figures" / f"{name}.png")
        assert f"](figures/{name}.png)" in text
        sizes[name] = img.shape[:2]
        rgb = img[..., :3].reshape(-1, 3)
        colours = np.unique((rgb * 255).round().astype(np.uint8), axis=0)
        assert len(colours) > 20, name  # drawn, not a blank or single-colour image
        assert (rgb < 0.5).any(axis=1).mean() > 0.005, name  # some dark ink: text and lines
    # figsize x 100 dpi: a panel per task (2 tasks), a bar per model (2), two levels of PLE gates.
    assert sizes["test_auc"] == (254, 760)
    assert sizes["learning_curves"] == (700, 820)
    assert sizes["reliability"] == (460, 820)
    assert sizes["gates_ple"] == (3 * 50 + 280, 4 * 2 * 75 + 300)  # 3 gates, 4 experts x 2 levels


def _figures(groups, monkeypatch):
    """The report's matplotlib figures themselves (titles, axes, legends), not their PNGs."""
    from mtlrec import report

    made = []
    monkeypatch.setattr(report, "_png", lambda fig: made.append(fig) or b"")
    report.test_auc_figure(groups)
    report.learning_curves_figure(groups)
    report.reliability_figure(groups)
    report.gates_figure(next(g for g in groups if g.label == "ple"))
    return dict(zip(["test_auc", "learning_curves", "reliability", "gates"], made))


def test_figures_say_what_they_show(bench_out, monkeypatch):
    from mtlrec.report import find_runs, group_runs

    out, _ = bench_out
    groups = group_runs(find_runs([str(out / "runs")]))
    figs = _figures(groups, monkeypatch)
    titles = {name: fig.get_suptitle() for name, fig in figs.items()}
    assert "mean over 2 seeds" in titles["test_auc"] and "standard deviation over seeds" in titles["test_auc"]
    assert "mean over 2 seeds" in titles["learning_curves"] and "mean over 2 seeds" in titles["reliability"]
    assert "2 seeds" in titles["gates"] and "cannot see" in titles["gates"]
    # One legend per figure, under the panels, readable; none inside a panel.
    for name in ("learning_curves", "reliability"):
        fig = figs[name]
        assert len(fig.legends) == 1 and not [ax for ax in fig.axes if ax.get_legend()], name
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert {"mmoe", "ple"} <= set(labels) and fig.legends[0].get_texts()[0].get_fontsize() >= 9
    # Gates: panels named for a reader, axes titled, hidden experts drawn apart from learned zeros.
    panels = [ax for ax in figs["gates"].axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["level 1 of 2 (extraction level)", "level 2 of 2 (extraction level)"]
    assert all(ax.get_xlabel() == "expert" for ax in panels) and panels[0].get_ylabel() == "gate (one per task)"
    first = panels[0]
    cells = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text() for t in first.texts}
    # experts click/0, like/0, shared/0, shared/1; gates click, like, shared: click's gate cannot see like/0.
    assert cells[(1, 0)] == "-" and cells[(0, 1)] == "-" and cells[(0, 0)] != "-" and cells[(1, 2)] != "-"
    assert sum(1 for p in first.patches if p.get_hatch() == "///") == 2
    # Reliability: a rare task (every bin's mean prediction under 0.2) on log axes, a common one linear.
    # (These 8-step models predict near 0.5 for every task, so the bins are set here.)
    from mtlrec import report

    spread = np.linspace(0.1, 0.7, 10)
    monkeypatch.setattr(report, "_bins", lambda g, task: (spread / 20, spread / 18) if task == "like"
                        else (spread, spread))
    made = []
    monkeypatch.setattr(report, "_png", lambda fig: made.append(fig) or b"")
    report.reliability_figure(groups)
    axes = [ax for ax in made[0].axes if ax.get_title()]
    scales = {ax.get_title().split(":")[0]: (ax.get_xscale(), ax.get_yscale()) for ax in axes}
    assert scales == {"click": ("linear", "linear"), "like": ("log", "log")}
    assert axes[1].get_xlim()[0] > 0 and axes[1].get_xlim()[1] < 0.05
    # Bars: little blank below the panels (the old layout left ~30% of the image empty).
    ax = [a for a in figs["test_auc"].axes if a.get_title()][0]
    assert ax.get_position().y0 < 0.3 and ax.get_position().height > 0.4


def test_the_report_names_each_run_s_machine(bench_out):
    from mtlrec.provenance import host

    out, _ = bench_out
    text = (out / "report.md").read_text()
    h = host()
    assert f"on {h['cpu_model']} ({h['usable_cpus']} CPUs; " in text and f"oneDNN {h['onednn_version']}" in text


def test_visible_cells_from_older_diagnostics_by_name():
    from mtlrec.report import _visible

    level = {"gates": ["click", "like", "shared"], "experts": ["click/0", "like/0", "shared/0"],
             "weights": [[0.5, 0, 0.5], [0, 0.4, 0.6], [0.3, 0.3, 0.4]]}
    assert _visible(level).tolist() == [[True, False, True], [False, True, True], [True, True, True]]
    mixture = {"gates": ["click"], "experts": ["expert0", "expert1"], "weights": [[0.0, 1.0]]}
    assert _visible(mixture).tolist() == [[True, True]]


def test_gate_heatmap_rows_sum_to_one(bench_out):
    from mtlrec.report import find_runs, group_runs, mean_gates

    out, _ = bench_out
    groups = {g.label: g for g in group_runs(find_runs([str(out / "runs")]))}
    assert sorted(groups) == sorted(BENCH_MODELS)
    ple = mean_gates(groups["ple"])
    assert [lvl["layer"] for lvl in ple] == ["cgc_0", "cgc_1"]
    assert ple[0]["gates"] == ["click", "like", "shared"] and ple[1]["gates"] == ["click", "like"]
    assert ple[0]["experts"] == ["click/0", "like/0", "shared/0", "shared/1"]
    for model in BENCH_MODELS:
        for level in mean_gates(groups[model]):
            w = np.array(level["weights"])
            np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-5)
            assert (w >= 0).all()
    # A task gate of PLE never weighs another task's expert.
    w = np.array(ple[0]["weights"])
    assert w[0, 1] == 0 and w[1, 0] == 0 and w[2, :2].min() > 0


@pytest.fixture(scope="module")
def train_runs(small_dataset, tmp_path_factory):
    """Two plain mtlrec-train runs (Python API) of different models, one seed each."""
    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for name in ("shared_bottom", "mmoe"):
        config = TrainConfig(
            model=name, model_dir=str(root / name), data=small_dataset, tasks=parse_tasks("click,like"),
            model_config=ModelConfig(tasks=("click", "like"), embedding_dim=4, expert_units=(8,), tower_units=(4,),
                                     bottom_units=(8,), num_experts=3),
            epochs=2, train_steps=6, batch_size=512, verbose=0, tensorboard=True)
        train(config)
        dirs.append(root / name)
    return dirs


def test_report_on_runs_made_by_train_alone(train_runs, tmp_path):
    res = run_cli("mtlrec.cli.report", *map(str, train_runs), f"--out={tmp_path / 'rep'}")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = _csv_rows(tmp_path / "rep" / "report.csv")
    assert sorted(rows) == ["mmoe", "shared_bottom"]
    for d in train_runs:
        with open(d / "metrics.json") as f:
            m = json.load(f)
        row = rows[m["model"]]
        assert float(row["click/auc_mean"]) == pytest.approx(m["test"]["click"]["auc"], rel=1e-12)
        assert row["click/auc_std"] == ""  # one run: no spread
    figures = sorted(os.listdir(tmp_path / "rep" / "figures"))
    assert figures == ["gates_mmoe.png", "learning_curves.png", "reliability.png", "test_auc.png"]
    # A rerun replaces the report; a folder of the user's or a run dir is never written into.
    assert run_cli("mtlrec.cli.report", str(train_runs[0]), f"--out={tmp_path / 'rep'}").returncode == 0
    assert sorted(os.listdir(tmp_path / "rep" / "figures")) == ["learning_curves.png", "reliability.png", "test_auc.png"]
    res = run_cli("mtlrec.cli.report", str(train_runs[0]), f"--out={train_runs[1]}")
    assert res.returncode == 1 and "not an mtlrec-report output" in res.stderr


def test_report_refuses_unfinished_and_empty(train_runs, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "run.json").write_text(json.dumps({"format": 1, "status": "training"}))
    res = run_cli("mtlrec.cli.report", str(unfinished), f"--out={tmp_path / 'rep'}")
    assert res.returncode == 1
    assert f"{unfinished}: not a finished mtlrec-train run (its status is 'training')" in res.stderr
    (tmp_path / "empty").mkdir()
    res = run_cli("mtlrec.cli.report", str(tmp_path / "empty"), f"--out={tmp_path / 'rep'}")
    assert res.returncode == 1 and "holds no mtlrec-train run" in res.stderr
    assert not (tmp_path / "rep").exists()


def test_tensorboard_has_per_task_validation_and_gate_histograms(train_runs):
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    def tags(sub):
        out = set()
        for path in glob.glob(str(train_runs[1] / "tensorboard" / sub / "*")):
            for record in tf.data.TFRecordDataset(path):
                event = event_pb2.Event.FromString(record.numpy())
                out |= {(v.tag, event.step) for v in event.summary.value}
        return out

    valid = tags("validation")
    for epoch in (1, 2):
        for tag in ("epoch_click_auc", "epoch_like_auc", "epoch_click_logloss", "epoch_like_logloss"):
            assert (tag, epoch) in valid
    gates = tags("gates")
    assert {("gates/experts/click/expert0", 1), ("gates/experts/like/expert2", 2)} <= gates
    assert len(gates) == 2 * 2 * 3  # epochs x gates x experts


def test_diagnostics_file_of_a_run(train_runs):
    with open(train_runs[1] / diagnostics.FILE) as f:
        diag = json.load(f)
    with open(train_runs[1] / "metrics.json") as f:
        test = json.load(f)["test"]
    for task in ("click", "like"):
        bins = diag["reliability"][task]
        assert len(bins["rows"]) == diagnostics.RELIABILITY_BINS and sum(bins["rows"]) == test[task]["rows"]
        means = np.array(bins["mean_prediction"])
        assert (np.diff(means) >= 0).all()  # bins in order of prediction
        # Row-weighted bin means give back the split's mean prediction and positive rate.
        rows = np.array(bins["rows"])
        assert np.average(means, weights=rows) == pytest.approx(test[task]["mean_prediction"], rel=1e-5)
        assert np.average(bins["positive_rate"], weights=rows) == pytest.approx(test[task]["positive_rate"], rel=1e-6)
    [level] = diag["gates"]
    assert level["layer"] == "experts" and level["rows"] == test["click"]["rows"]
    with open(train_runs[0] / diagnostics.FILE) as f:
        assert json.load(f)["gates"] == []  # Shared-Bottom has no gates


def test_reliability_bins_by_hand():
    labels = np.array([0, 0, 1, 0, 1, 1, 0, 1, 9])
    probs = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    weights = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0])  # the last row is masked
    out = diagnostics.reliability(labels, probs, weights, bins=3)
    assert out["rows"] == [3, 3, 2]
    np.testing.assert_allclose(out["mean_prediction"], [0.2, 0.5, 0.75])
    np.testing.assert_allclose(out["positive_rate"], [1 / 3, 2 / 3, 0.5])


def test_gate_probe_equals_the_layer_on_its_own_input(small_dataset):
    import keras

    from mtlrec.data import load_manifest, make_dataset
    from mtlrec.models import build_model

    manifest = load_manifest(small_dataset)
    tasks = parse_tasks("click,like")
    net = build_model("mmoe", manifest, ModelConfig(tasks=("click", "like"), embedding_dim=4, expert_units=(8,),
                                                    num_experts=3))
    ds = make_dataset(manifest, "test", 700, tasks, shuffle=False).take(2)
    probe = diagnostics.GateProbe(net, ["click", "like"])
    [level] = probe.mean_weights(ds)
    # By hand: the embedding layer's output, then each gate's softmax.
    embed = keras.Model(net.input, net.get_layer("embedding").output)
    layer = net.get_layer("experts")
    rows = [np.concatenate([keras.ops.softmax(g(embed(f)), axis=-1).numpy() for f, *_ in ds]) for g in layer.gates]
    np.testing.assert_allclose(level["weights"], [r.mean(axis=0) for r in rows], atol=1e-6)
    assert level["rows"] == len(rows[0]) == 1400

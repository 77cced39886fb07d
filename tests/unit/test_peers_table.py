"""benchmarks.peers.table: one row per model and mtlrec variant, each against DeepCTR's float32 medians."""

import json

from benchmarks.peers import table


def test_table_gives_each_variant_its_ratio_of_medians(tmp_path, capsys):
    rows = []
    for peer, fp32, bf16 in [(30_000, 60_000, 90_000), (40_000, 62_000, 80_000),
                             (35_000, 58_000, 100_000)]:
        auc = {"click": 0.64, "like": 0.74}
        rows += [{"library": "deepctr", "model": "ple", "steady_examples_per_sec": peer, "test_auc": auc},
                 {"library": "mtlrec", "model": "ple", "variant": "float32", "epoch_examples_per_sec": fp32,
                  "test_auc": auc},
                 {"library": "mtlrec", "model": "ple", "variant": "mixed_bfloat16", "epoch_examples_per_sec": bf16,
                  "test_auc": {"click": 0.65, "like": 0.75}}]
    rows.append({"library": "mtlrec", "model": "mmoe", "epoch_examples_per_sec": 1, "test_auc": {}})  # no peer: left out
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table.main(str(path))
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| ple")]
    assert len(lines) == 2 and "mmoe" not in out
    assert "| ple | float32 |" in lines[0] and "**1.71x**" in lines[0]  # 60,000 / 35,000
    assert "| ple | mixed_bfloat16 |" in lines[1] and "**2.57x**" in lines[1]  # 90,000 / 35,000
    assert "0.6500, 0.7500" in lines[1]

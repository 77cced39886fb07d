"""The peers table from run.sh's results.jsonl: medians over rounds, ratios.

    python -m benchmarks.peers.table bench/peers/results.jsonl
"""

import json
import statistics
import sys


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path) if line.startswith("{")]
    models = list(dict.fromkeys(r["model"] for r in rows))
    try:  # the machine the figures are from (the table is made where run.sh ran)
        from mtlrec.provenance import host

        h = host()
        print(f"Host: {h['cpu_model']}, {h['usable_cpus']} CPUs, {', '.join(h['vector_extensions'])}; "
              f"oneDNN {h['onednn_version']}{'' if h['onednn_opts'] else ' (off)'}\n")
    except ImportError:  # run outside mtlrec's environment
        pass
    variants = list(dict.fromkeys(r.get("variant", "float32") for r in rows if r["library"] == "mtlrec"))
    print("| model | mtlrec variant | DeepCTR steady examples/s | mtlrec epoch examples/s | ratio of medians | "
          "test AUC click, like: DeepCTR | mtlrec |")
    print("|---|---|---|---|---|---|---|")

    def auc(runs):
        tasks = runs[0]["test_auc"]
        return ", ".join(f"{statistics.mean(r['test_auc'][t] for r in runs):.4f}" for t in tasks)

    for m in models:
        peer = [r for r in rows if r["model"] == m and r["library"] == "deepctr"]
        if not peer:
            continue
        p = [r["steady_examples_per_sec"] for r in peer]
        for v in variants:
            ours = [r for r in rows if r["model"] == m and r["library"] == "mtlrec" and r.get("variant", "float32") == v]
            if not ours:
                continue
            o = [r["epoch_examples_per_sec"] for r in ours]
            print(f"| {m} | {v} | {', '.join(f'{x:,.0f}' for x in p)} | {', '.join(f'{x:,.0f}' for x in o)} | "
                  f"**{statistics.median(o) / statistics.median(p):.2f}x** | {auc(peer)} | {auc(ours)} |")


if __name__ == "__main__":
    main(sys.argv[1])

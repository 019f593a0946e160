"""A markdown table from the JSON lines bench/models.py, bench/peers.py and bench/convs.py print.

    python bench/table.py results.jsonl [more.jsonl ...]

Rows of the same model and workload are grouped; ``theirs / ours`` is a peer's median training
step divided by ours (above 1: we are faster), per training step and per recurrent step.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                rows.append(json.loads(line))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path)
    rows = load(parser.parse_args().results)
    steps = [r for r in rows if "train_ms_per_step" in r and "implementation" in r]
    convs = {(r["model"], r["workload"], r["precision"]): r for r in rows if "conv_ms_per_step" in r}
    print("| workload | model | implementation | precision | params | recurrent steps | train ms/step | "
          "ms per recurrent step | theirs / ours | infer ms (batch 1 / batch) |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in steps:
        ours = next((o for o in steps if o["implementation"] == "nowcast" and o["model"] == r["model"]
                     and o["workload"] == r["workload"] and o["precision"] == r["precision"]), None)
        per_step = r["train_ms_per_step"] / r["recurrent_steps"] if r.get("recurrent_steps") else None
        ratio = "-"
        if ours is not None and r is not ours:
            ratio = f"{r['train_ms_per_step'] / ours['train_ms_per_step']:.2f}x"
            if per_step and ours.get("recurrent_steps"):
                ours_step = ours["train_ms_per_step"] / ours["recurrent_steps"]
                ratio += f" ({per_step / ours_step:.2f}x per recurrent step)"
        infer = " / ".join(f"{v:g}" for v in r["infer_ms"].values())
        print(f"| {r['workload']} | {r['model']} | {r['implementation']} | {r['precision']} | {r['params']:,} | "
              f"{r.get('recurrent_steps', '-')} | {r['train_ms_per_step']:.0f} | "
              f"{per_step:.0f} | {ratio} | {infer} |" if per_step else
              f"| {r['workload']} | {r['model']} | {r['implementation']} | {r['precision']} | {r['params']:,} | - | "
              f"{r['train_ms_per_step']:.0f} | - | {ratio} | {infer} |")
    if convs:
        print("\n| workload | model | conv calls | bare conv ms/step | conv GFLOP/step | GFLOP/s | our step ms | "
              "bare convs / step |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for (model, workload, precision), c in convs.items():
            ours = next((o for o in steps if o["implementation"] == "nowcast" and o["model"] == model
                         and o["workload"] == workload and o["precision"] == precision), None)
            step = ours["train_ms_per_step"] if ours else c.get("train_ms_per_step")
            fraction = f"{c['conv_ms_per_step'] / step:.2f}" if step else "-"
            print(f"| {workload} | {model} | {c['conv_calls']} | {c['conv_ms_per_step']:.0f} | "
                  f"{c['conv_gflop_per_step']:.0f} | {c['conv_gflop_per_s']:.0f} | "
                  f"{step:.0f} | {fraction} |" if step else
                  f"| {workload} | {model} | {c['conv_calls']} | {c['conv_ms_per_step']:.0f} | "
                  f"{c['conv_gflop_per_step']:.0f} | {c['conv_gflop_per_s']:.0f} | - | - |")


if __name__ == "__main__":
    main()

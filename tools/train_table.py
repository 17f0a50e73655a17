"""One table of short training runs: python tools/train_table.py OUT.md WORK_DIR...

Each WORK_DIR holds a reference.train log.jsonl; the table has, per run, the
first and last loss, the median step and its stages (reference.stages), and
the peak memory, so a GPU window's reference and gflops runs sit side by side.
"""
import json
import sys
from pathlib import Path


def summarise(work_dir):
    recs = [json.loads(line) for line in (Path(work_dir) / "log.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in recs if not r.get("summary")]
    summary = next((r for r in recs if r.get("summary")), {})
    stages = summary.get("median_stage_s") or {}
    return {
        "run": Path(work_dir).name,
        "iters": summary.get("iters", len(steps)),
        "first loss": steps[0]["loss"] if steps else None,
        "last loss": steps[-1]["loss"] if steps else None,
        "median step (ms)": 1e3 * summary["median_step_s"] if summary.get("median_step_s") else None,
        "peak MiB": summary.get("peak_mem_mib"),
        "stages (ms)": ", ".join(f"{k} {1e3 * v:.1f}" for k, v in stages.items()),
    }


def main():
    out, dirs = sys.argv[1], sys.argv[2:]
    rows = []
    for d in dirs:
        try:
            rows.append(summarise(d))
        except (OSError, ValueError, KeyError, IndexError) as e:
            rows.append({"run": Path(d).name, "stages (ms)": f"no log: {type(e).__name__}: {e}"})
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

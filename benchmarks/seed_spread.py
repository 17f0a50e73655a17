"""AP over seeds, per ops backend: is the gflops AP inside the reference's seed spread?

In float32 two runs that differ only in the order of floating-point sums
drift apart like two seeds, so one (reference, gflops) pair of runs says
nothing about whether the ops differ. This trains N seeds with each backend
on the built-in data, evaluates each with COCOeval, and reports the mean and
spread per backend. (The exact check is the float64 run of `make demo`.)

    python -m benchmarks.seed_spread                   # small preset, 3 seeds, 1000 iterations, CPU
    python -m benchmarks.seed_spread --seeds 5 --iters 2000
    python -m benchmarks.seed_spread --model autoassign --seeds 4

Runs already finished under --work-dir are reused. Results:
benchmarks/results/seed_spread_[autoassign_]<preset>_<device>.{md,json,png}.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS = ("reference", "gflops")


def run_one(preset, ops, seed, iters, device, work, model="gfl"):
    wd = work / f"{ops}_seed{seed}"
    if not (wd / "eval.json").exists():
        py = sys.executable
        cmd = [py, "-m", "reference.train", "--model", model, "--preset", preset, "--ops", ops, "--seed", str(seed),
               "--device", device, "--work-dir", str(wd), "--quiet", "--log-interval", "50"]
        if iters:
            cmd += ["--iters", str(iters)]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        subprocess.run([py, "-m", "reference.evaluate", "--checkpoint", str(wd / "latest.pth"), "--device", device],
                       check=True, stdout=subprocess.DEVNULL)
    return json.loads((wd / "eval.json").read_text())["stats"]


def summarise(aps):
    return dict(mean=statistics.mean(aps), std=statistics.stdev(aps) if len(aps) > 1 else 0.0,
                min=min(aps), max=max(aps))


def plot(per_backend, out_png, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for x, (ops, runs) in enumerate(per_backend.items()):
        aps = [r["AP"] for r in runs]
        s = summarise(aps)
        ax.scatter([x] * len(aps), aps, alpha=0.7, label=f"{ops} (seeds)")
        ax.errorbar([x + 0.15], [s["mean"]], yerr=[s["std"]], fmt="o", color="black", capsize=4)
    ax.set_xticks(range(len(per_backend)))
    ax.set_xticklabels(list(per_backend))
    ax.set_xlim(-0.5, len(per_backend) - 0.5)
    ax.set_ylabel("COCO AP")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["gfl", "autoassign"], default="gfl")
    p.add_argument("--preset", default="small")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--iters", type=int, default=1000, help="0: the preset's 12-epoch schedule")
    p.add_argument("--device", default="cpu")
    p.add_argument("--work-dir", default="work_dirs/seed_spread")
    p.add_argument("--out-dir", default=str(RESULTS), help="where the md/json/png go")
    a = p.parse_args(argv)
    name = "" if a.model == "gfl" else f"{a.model}_"
    work = Path(a.work_dir) / f"{name}{a.preset}_{a.iters}"
    per_backend = {ops: [] for ops in BACKENDS}
    for seed in range(a.seeds):
        for ops in BACKENDS:  # interleaved, so a slow machine phase hits both alike
            stats = run_one(a.preset, ops, seed, a.iters, a.device, work, a.model)
            per_backend[ops].append(dict(seed=seed, AP=stats["AP"], AP50=stats["AP50"]))
    summary = {ops: dict(AP=summarise([r["AP"] for r in runs]), AP50=summarise([r["AP50"] for r in runs]))
               for ops, runs in per_backend.items()}
    ref, gfl = summary["reference"]["AP"], summary["gflops"]["AP"]
    # The seed spread: the reference's mean +- 2 std; and Welch's t for the
    # difference of the two means (|t| < 2: no difference these seeds can see).
    lo, hi = ref["mean"] - 2 * ref["std"], ref["mean"] + 2 * ref["std"]
    inside = lo <= gfl["mean"] <= hi
    se = (ref["std"] ** 2 / a.seeds + gfl["std"] ** 2 / a.seeds) ** 0.5
    welch_t = (gfl["mean"] - ref["mean"]) / se if se > 0 else 0.0
    summary["verdict"] = dict(spread=[lo, hi], inside=inside, welch_t=welch_t)
    tag = f"{name}{a.preset}_{'cuda' if a.device.startswith('cuda') else 'cpu'}"
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{'GFL' if a.model == 'gfl' else 'AutoAssign'}, preset {a.preset}, {a.iters or '12-epoch'} iterations, float32, {a.seeds} seeds"
    plot(per_backend, out / f"seed_spread_{tag}.png", title)
    (out / f"seed_spread_{tag}.json").write_text(json.dumps(dict(runs=per_backend, summary=summary,
                                                                     args=vars(a)), indent=2))
    lines = [f"# AP over seeds: {title}, device {a.device}", "",
             "| ops | " + " | ".join(f"seed {s}" for s in range(a.seeds)) + " | mean | std | min..max |",
             "|---|" + "---|" * (a.seeds + 3)]
    for ops, runs in per_backend.items():
        s = summary[ops]["AP"]
        lines.append(f"| {ops} | " + " | ".join(f"{r['AP']:.3f}" for r in runs)
                     + f" | {s['mean']:.3f} | {s['std']:.3f} | {s['min']:.3f}..{s['max']:.3f} |")
    lines += ["", f"gflops mean AP {gfl['mean']:.3f} is {'inside' if inside else 'OUTSIDE'} the reference's seed "
              f"spread (mean +- 2 std: {lo:.3f}..{hi:.3f}); difference of means {gfl['mean'] - ref['mean']:+.3f}, "
              f"Welch's t = {welch_t:+.2f} ({'no difference these seeds can detect' if abs(welch_t) < 2 else 'a difference'}"
              f"; seed std {ref['std']:.3f} reference, {gfl['std']:.3f} gflops).",
              "", f"Plot: seed_spread_{tag}.png"]
    text = "\n".join(lines) + "\n"
    (out / f"seed_spread_{tag}.md").write_text(text)
    print(text)
    return summary


if __name__ == "__main__":
    main()

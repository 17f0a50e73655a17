"""The benchmark harness's timing: what the README's speedups rest on."""
import time

import torch

from benchmarks.harness import interleaved_median_ms, median_ms


def test_interleaved_medians_time_each_entry_after_its_setup_in_alternating_batches():
    log = []

    def entry(name, sleep_s):
        return (lambda: (log.append(name), time.sleep(sleep_s)), lambda: log.append(f"setup {name}"))

    ms = interleaved_median_ms({"slow": entry("slow", 0.004), "fast": entry("fast", 0.0)}, torch.device("cpu"),
                               warmup=1, batch=2, min_iters=4, max_iters=4, budget_s=0.0)
    assert ms["slow"] >= 4.0 and ms["fast"] < 1.0, ms
    timed = log[4:]  # after one warmup call (and its setup) of each
    assert timed == ["setup slow", "slow"] * 2 + ["setup fast", "fast"] * 2 + ["setup slow", "slow"] * 2 + ["setup fast", "fast"] * 2


def test_median_ms_runs_setup_before_every_timed_call():
    log = []
    ms = median_ms(lambda: (log.append("call"), time.sleep(0.002)), torch.device("cpu"), warmup=1, min_iters=3,
                   max_iters=3, budget_s=0.0, setup=lambda: log.append("setup"))
    assert ms >= 2.0 and log == ["setup", "call"] * 4, (ms, log)

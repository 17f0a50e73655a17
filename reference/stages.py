"""Where a training step's time goes: marks between stages, read once per step.

On CUDA the marks are CUDA events (GPU stream time, no synchronisation
between stages; the step's end is synchronised once); on the CPU they are
wall-clock times.
"""
import time

import torch

TRAIN_STAGES = ("data", "backbone+neck", "head", "assign", "losses", "backward", "optimizer")
EVAL_STAGES = ("network", "postprocess")


class StageTimer:
    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.marks = []

    def _now(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def start(self):
        self.marks = [(None, self._now())]

    def __call__(self, stage):
        """Ends `stage` here (it began at the previous mark)."""
        if self.marks:
            self.marks.append((stage, self._now()))

    def seconds(self):
        """{stage: seconds} of the marks since start(); call after the step's sync."""
        out = {}
        for (_, a), (stage, b) in zip(self.marks, self.marks[1:]):
            dt = a.elapsed_time(b) / 1e3 if self.cuda else b - a
            out[stage] = out.get(stage, 0.0) + dt
        return out


def medians(records, key="stages"):
    """Per stage, the median over records of record[key][stage]."""
    stages = {}
    for r in records:
        for k, v in r.get(key, {}).items():
            stages.setdefault(k, []).append(v)
    return {k: sorted(v)[len(v) // 2] for k, v in stages.items()}

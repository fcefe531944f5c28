"""Timing helpers for the benchmarks: medians over repeats, a table, and a JSON record."""
from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def timeit(fn, repeat: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def record(name: str, rows: list[dict]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    widths = [max(len(k), *(len(_fmt(r.get(k, "-"))) for r in rows)) for k in keys]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(k, "-")).ljust(w) for k, w in zip(keys, widths)))
    print(f"-> {path}")
    return path


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def random_cbm(K: int, C: int, D: int = 512, backbone_spec: str = "bench:random"):
    """A CBM with random unit concept vectors, a 5 %-dense head and stats from random embeddings:
    timing only."""
    from cbm_core import ConceptBank, ConceptBottleneckModel, ConceptStats
    from cbm_core.core.concept_layer import TextCosine

    g = torch.Generator().manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(K, D, generator=g), dim=1)
    train = torch.nn.functional.normalize(torch.randn(2000, D, generator=g), dim=1)
    names = tuple(f"concept {k}" for k in range(K))
    weight = torch.randn(C, K, generator=g) * (torch.rand(C, K, generator=g) < 0.05)
    return ConceptBottleneckModel(backbone_spec, ConceptBank(names), TextCosine(vectors), tuple(f"class {c}" for c in range(C)),
                                  ConceptStats.from_scores(names, train @ vectors.T), weight, torch.zeros(C))


def run_suite(suite: list[list[str]]) -> int:
    """Run each benchmark (script name + arguments) in its own process, so that one's threads and
    caches do not colour the next; 1 if any failed."""
    import subprocess
    import sys

    here = Path(__file__).resolve().parent
    failed = []
    for args in suite:
        print(f"\n== {' '.join(args)}", flush=True)
        t = time.perf_counter()
        if subprocess.call([sys.executable, str(here / args[0]), *args[1:]], cwd=here.parent) != 0:
            failed.append(" ".join(args))
        print(f"   ({time.perf_counter() - t:.0f} s)", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


"""The CPU benchmark suite in one command (about 3-4 minutes on 2 cores):

    pip install -r bench/requirements.txt && python bench/run_cpu.py [--browser]

Runs each benchmark in its own process (so one's threads and caches do not colour the next) and
leaves the JSON records in bench/results/. ``--browser`` adds the Playwright latency benchmark.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITE = ["intervention.py", "explain.py", "saliency.py", "feature_extraction.py", "head_training.py"]


def main() -> int:
    suite = SUITE + (["browser_latency.py"] if "--browser" in sys.argv else [])
    failed = []
    for script in suite:
        print(f"\n== {script}", flush=True)
        t = time.perf_counter()
        if subprocess.call([sys.executable, str(HERE / script)], cwd=HERE.parent) != 0:
            failed.append(script)
        print(f"   ({time.perf_counter() - t:.0f} s)", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

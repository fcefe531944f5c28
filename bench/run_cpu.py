"""The CPU benchmark suite in one command (about 2 minutes on 2 cores, more on a cold torch.compile cache):

    pip install -r bench/requirements.txt && python bench/run_cpu.py [--browser]

Runs each benchmark in its own process and leaves the JSON records in bench/results/.
``--browser`` adds the Playwright latency benchmark.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import run_suite  # noqa: E402

SUITE = [["intervention.py"], ["explain.py"], ["saliency.py"], ["feature_extraction.py"], ["head_training.py", "--size", "small"]]

if __name__ == "__main__":
    sys.exit(run_suite(SUITE + ([["browser_latency.py"]] if "--browser" in sys.argv else [])))

"""The benchmark suite: ``make bench`` (``bench/run.py``); see docs/PERFORMANCE.md."""

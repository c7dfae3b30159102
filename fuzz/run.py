"""Run every fuzz target for its fixed budget of inputs; fail if any crashed (``make fuzz``).

    python fuzz/run.py                  # the full budget: 1,000,000 inputs in all
    python fuzz/run.py --scale 0.01     # a quick look: 1% of each budget
    python fuzz/run.py --only codec     # one target

Each target is a harness (``fuzz/fuzz_<target>.py``) run by libFuzzer through atheris, one
after the other (the machine's cores are shared). It starts from its checked-in seeds
(``fuzz/seeds/<target>/``) and from what earlier runs found (``build/fuzz/<target>/``, kept
between runs, never committed). A crash stops that target: the input is saved as
``fuzz/crashes/<target>-crash-<sha1>`` (replay it with ``python fuzz/fuzz_<target>.py FILE``)
and the run fails once every target had its turn. The table printed at the end gives the
inputs each target ran, its seconds and its result.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = ROOT / "build" / "fuzz"
CRASHES = HERE / "crashes"

#: Inputs per target (1,000,000 in all). The codec runs the parser too, so the parser alone
#: gets fewer; the periodic target is the slowest per input (croniter).
BUDGETS = {"job": 250_000, "codec": 300_000, "activejob": 250_000, "periodic": 200_000}
DICTS = {"periodic": "periodic.dict"}

#: libFuzzer options for every target: inputs up to 8 KiB (deep nesting needs a few hundred
#: bytes), an input running 30 s is a hang, 2 GiB of memory is a leak.
OPTIONS = ("-max_len=8192", "-timeout=30", "-rss_limit_mb=2048", "-print_final_stats=1")


@dataclass
class Result:
    target: str
    inputs: int
    seconds: float
    returncode: int
    crash: str | None
    error: str | None
    log: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.crash is None


def run_target(target: str, runs: int) -> Result:
    corpus = WORK / target
    corpus.mkdir(parents=True, exist_ok=True)
    CRASHES.mkdir(exist_ok=True)
    log = WORK / f"{target}.log"
    argv = [
        sys.executable,
        str(HERE / f"fuzz_{target}.py"),
        f"-runs={runs}",
        f"-dict={HERE / 'dicts' / DICTS.get(target, 'json.dict')}",
        f"-artifact_prefix={CRASHES / target}-",
        *OPTIONS,
        str(corpus),
        str(HERE / "seeds" / target),
    ]
    started = time.monotonic()
    with log.open("w") as out:
        returncode = subprocess.call(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    seconds = time.monotonic() - started
    text = log.read_text(errors="replace")
    done = re.search(r"Done (\d+) runs in", text)
    statuses = re.findall(r"^#(\d+)\s", text, re.MULTILINE)
    inputs = int(done[1]) if done else int(statuses[-1]) if statuses else 0
    crash = re.search(r"Test unit written to (\S+)", text)
    error = re.search(r"^(\w*(?:Error|Exception)\b.*)$", text, re.MULTILINE)
    return Result(
        target,
        inputs,
        seconds,
        returncode,
        crash[1] if crash else None,
        error[1][:160] if error else None,
        log,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every budget")
    parser.add_argument("--only", action="append", choices=sorted(BUDGETS), help="a target")
    options = parser.parse_args()
    targets = options.only or list(BUDGETS)
    results = []
    for target in targets:
        runs = max(1, int(BUDGETS[target] * options.scale))
        print(f"fuzz: {target}: {runs:,} inputs ...", flush=True)
        result = run_target(target, runs)
        results.append(result)
        state = "ok" if result.ok else f"CRASH ({result.error or f'exit {result.returncode}'})"
        print(f"fuzz: {target}: {result.inputs:,} inputs in {result.seconds:.0f}s: {state}")
        if not result.ok:
            print(f"fuzz: {target}: input saved as {result.crash}; log {result.log}")
    total = sum(r.inputs for r in results)
    seconds = sum(r.seconds for r in results)
    print(f"\n{'target':<10} {'inputs':>10} {'seconds':>8} {'inputs/s':>9}  result")
    for r in results:
        rate = r.inputs / r.seconds if r.seconds else 0
        state = "ok" if r.ok else f"crash: {r.crash}"
        print(f"{r.target:<10} {r.inputs:>10,} {r.seconds:>8.0f} {rate:>9,.0f}  {state}")
    print(f"{'total':<10} {total:>10,} {seconds:>8.0f}")
    crashed = [r.target for r in results if not r.ok]
    if crashed:
        print(f"fuzz: FAILED: {', '.join(crashed)} crashed (inputs in {CRASHES})")
        return 1
    print("fuzz: no crash")
    return 0


if __name__ == "__main__":
    sys.exit(main())

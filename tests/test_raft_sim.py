"""The seeded simulation of tests/raft_sim.py: many worlds, each from one seed, each checked
after every step (election safety, log matching, leader completeness, state machine safety,
committed entries durable on a majority, no index going backwards) and, once healed, for
progress.

A failure names its seed; rerun it alone (add RAFT_STEPS=... if the message says so):

    RAFT_SEED=123 .venv/bin/python -m pytest tests/test_raft_sim.py -k single
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

from tests.raft_sim import SafetyViolation, run_seed

#: the CI sweep: CHUNKS x SEEDS_PER_CHUNK runs of STEPS steps (about 50 s in all, on one core)
STEPS = 300
SEEDS_PER_CHUNK = 250
CHUNKS = 10
#: the slow sweep: other seeds, longer runs
SLOW_STEPS = 1000
SLOW_SEEDS_PER_CHUNK = 1000
SLOW_CHUNKS = 50
SLOW_FIRST_SEED = 1_000_000


def sweep(first: int, count: int, steps: int) -> None:
    failures = []
    for seed in range(first, first + count):
        try:
            run_seed(seed, steps)
        except SafetyViolation as e:  # its message names the seed
            failures.append((seed, str(e)))
        except Exception as e:  # the core or the harness broke: reproducible all the same
            failures.append((seed, f"seed {seed}: {type(e).__name__}: {e}"))
        if len(failures) == 3:
            break
    if failures:
        steps_env = "" if steps == STEPS else f"RAFT_STEPS={steps} "
        report = "\n\n".join(
            f"{what}\n  rerun: RAFT_SEED={seed} {steps_env}"
            ".venv/bin/python -m pytest tests/test_raft_sim.py -k single"
            for seed, what in failures
        )
        pytest.fail(report, pytrace=False)


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_sweep(chunk: int) -> None:
    sweep(chunk * SEEDS_PER_CHUNK, SEEDS_PER_CHUNK, STEPS)


@pytest.mark.skipif("RAFT_SEED" not in os.environ, reason="set RAFT_SEED to rerun one seed")
def test_single_seed() -> None:
    seed = int(os.environ["RAFT_SEED"])
    world = run_seed(seed, int(os.environ.get("RAFT_STEPS", STEPS)))
    print(f"seed {seed}: {world.p}\n{dict(world.stats)}")


def test_the_sweep_sees_every_kind_of_fault() -> None:
    """A simulation that no longer crashes nodes or installs snapshots proves nothing."""
    seen: Counter[str] = Counter()
    for seed in range(150):
        seen.update(run_seed(seed, STEPS).stats)
    kinds = [
        "leader",
        "crash",
        "log cut",
        "compaction",
        "InstallSnapshot",
        "snapshot installed",
        "TimeoutNow",
        "config committed",
        "node added",
        "wipe",
        "acknowledged",
    ]
    assert [k for k in kinds if not seen[k]] == []


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("chunk", range(SLOW_CHUNKS))
def test_long_sweep(chunk: int) -> None:
    sweep(SLOW_FIRST_SEED + chunk * SLOW_SEEDS_PER_CHUNK, SLOW_SEEDS_PER_CHUNK, SLOW_STEPS)

"""What the store's integrity checks cost: LevelDB's paranoid checks on the write path,
verify_checksums on reads (recovery), and the confirmed mark's pwrite per sync.

    python benchmarks/store_checks.py [--batches 2000] [--entries 100] [--size 1024]

Writes `--batches` synced batches of `--entries` values of `--size` bytes (a group commit),
then reads everything back, each with the check off and on, in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import plyvel

from broker.store.mark import ConfirmedMark


def write(path: str, paranoid: bool, batches: int, entries: int, value: bytes) -> float:
    db = plyvel.DB(path, create_if_missing=True, paranoid_checks=paranoid)
    start = time.perf_counter()
    for b in range(batches):
        with db.write_batch(sync=True) as batch:
            for e in range(entries):
                batch.put(b"L%016d" % (b * entries + e), value)
    elapsed = time.perf_counter() - start
    db.compact_range()  # reads below come from tables, as after a restart
    db.close()
    return batches * entries / elapsed


def read(path: str, verify: bool) -> float:
    db = plyvel.DB(path, paranoid_checks=True)
    start = time.perf_counter()
    count = sum(1 for _ in db.iterator(verify_checksums=verify))
    elapsed = time.perf_counter() - start
    db.close()
    return count / elapsed


def mark_cost(path: str, rounds: int) -> float:
    mark = ConfirmedMark(path)
    start = time.perf_counter()
    for i in range(1, rounds + 1):
        mark.synced(i)
    elapsed = time.perf_counter() - start
    mark.close()
    return elapsed / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--entries", type=int, default=100)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    value = os.urandom(args.size)
    root = tempfile.mkdtemp(prefix="store-checks-")
    try:
        for paranoid in (False, True):
            path = os.path.join(root, f"db-{paranoid}")
            rate = write(path, paranoid, args.batches, args.entries, value)
            print(f"synced writes, paranoid_checks={paranoid}: {rate:,.0f} values/s")
        path = os.path.join(root, "db-True")
        read(path, False)  # warm the page cache for both
        for verify in (False, True):
            print(f"full read, verify_checksums={verify}: {read(path, verify):,.0f} values/s")
        print(f"confirmed mark, per sync: {mark_cost(root, 100_000):.2f} us")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()

"""FileStorage under SIGKILL: a child process appends (and now and then snapshots) in a loop,
printing each index once ``append_log`` has returned; the parent kills it at seeded-random
moments, reopens the directory and checks that what it finds is a prefix of what was
written, holding every append that returned. The next child continues on the same directory.

The property holds whatever the timing: the seed only chooses when to kill, and every check
is about what the child acknowledged before it died, whichever moment that was.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from raft.storage import FileStorage

pytestmark = pytest.mark.integration

ROUNDS = 60
SEED = 20240611
REPO = Path(__file__).resolve().parent.parent

CHILD = """
import sys
from raft.core.types import ConfState, LogEntry, NodeId, Snapshot, SnapshotMeta
from raft.storage import FileStorage

def command(k, i):
    return (f"k{k}i{i}:" + "x" * ((i * 37) % 150)).encode()

directory, k = sys.argv[1], int(sys.argv[2])
store = FileStorage(directory, segment_size=16384)
snap = store.load_snapshot()
terms = {e.index: e.term for e in store.load_log()}
last = max(terms, default=snap.meta.index if snap else 0)
print("ready", last, flush=True)
n = 0
while True:
    n += 1
    size = 1 + (n * 7 + k) % 32
    batch = [LogEntry(i, k, command(k, i)) for i in range(last + 1, last + 1 + size)]
    store.append_log(batch)
    last += size
    terms.update((i, k) for i in range(last - size + 1, last + 1))
    print(last, flush=True)
    if n % 25 == 0 and last - 10 in terms:
        at = last - 10
        conf = ConfState(frozenset({NodeId("a")}))
        store.save_snapshot(Snapshot(SnapshotMeta(at, terms[at], conf), f"snap{at}".encode()))
        terms = {i: t for i, t in terms.items() if i > at}
"""


def command(k: int, i: int) -> bytes:
    return (f"k{k}i{i}:" + "x" * ((i * 37) % 150)).encode()


@dataclass
class Written:
    """What the children wrote that a reopen has since confirmed: index -> (term, command)."""

    entries: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    last: int = 0


def run_child(directory: Path, k: int, rng: random.Random) -> tuple[int | None, int]:
    """Start child ``k``, kill it at a random moment; return (start index, last acked)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), str(k)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    first = b""
    try:
        assert proc.stdout is not None
        if rng.random() < 0.15:  # sometimes while it starts up, opens and recovers
            time.sleep(rng.uniform(0.0, 0.3))
        else:
            first = proc.stdout.readline()
            assert first.startswith(b"ready"), (first, proc.stderr and proc.stderr.read())
            time.sleep(rng.uniform(0.0, 0.08))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    return parse_output(first + out)


def parse_output(out: bytes) -> tuple[int | None, int]:
    """The start index and the last index acknowledged (complete lines only)."""
    start: int | None = None
    acked = 0
    complete = out.split(b"\n")[:-1]  # a line cut by the kill has no newline
    for line in complete:
        if line.startswith(b"ready"):
            start = int(line.split()[1])
            acked = start
        else:
            acked = int(line)
    return start, acked


def check_reopen(directory: Path, written: Written, k: int, acked: int) -> bool:
    """Reopen; check the log is a prefix of what was written and holds every acked append."""
    with FileStorage(directory, segment_size=16384) as store:
        log = store.load_log()
        snap = store.load_snapshot()
        torn = store.recovered_tail is not None

    def expected(i: int) -> tuple[int, bytes]:
        return written.entries[i] if i <= written.last else (k, command(k, i))

    first = snap.meta.index + 1 if snap else 1
    assert [e.index for e in log] == list(range(first, first + len(log))), "not contiguous"
    for e in log:
        assert (e.term, e.command) == expected(e.index), f"entry {e.index} differs"
    if snap is not None:
        assert snap.meta.term == expected(snap.meta.index)[0]
        assert snap.data == f"snap{snap.meta.index}".encode()
    last = log[-1].index if log else first - 1
    assert last >= acked, f"acknowledged append lost: durable up to {last}, acked {acked}"
    assert last >= written.last, f"durable entries lost: {last} < {written.last}"
    for i in range(written.last + 1, last + 1):
        written.entries[i] = (k, command(k, i))
    written.last = last
    return torn


def test_sigkill_never_loses_an_acknowledged_append(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    directory = tmp_path / "node"
    written = Written()
    torn_tails = 0
    deadline = time.monotonic() + 120
    for k in range(1, ROUNDS + 1):
        start, acked = run_child(directory, k, rng)
        if start is not None:
            assert start == written.last, "the child did not see what the parent saw"
        torn_tails += check_reopen(directory, written, k, acked)
        assert time.monotonic() < deadline, "crash test too slow"
    assert written.last > 0
    # SIGKILL keeps what reached the page cache, so torn tails are rare here; the torn-tail
    # rules are tested directly in test_storage.py.
    print(f"{ROUNDS} kills, {written.last} entries durable, {torn_tails} torn tails recovered")

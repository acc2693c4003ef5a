"""The audit trails FileStorage keeps for the chaos run's checks: the vote log and the WAL's
COMMIT records (a leader's commit decisions)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from raft.core.errors import RaftError
from raft.core.types import HardState, LogEntry, NodeId
from raft.kv import KVStore
from raft.node import RaftNode
from raft.storage import FileStorage, read_data_dir, read_votes
from raft.transport import MemoryNetwork
from raft.wal import CommitMark


def entries(first: int, last: int, term: int) -> list[LogEntry]:
    return [LogEntry(i, term, b"c%d" % i) for i in range(first, last + 1)]


def test_every_new_vote_is_logged_once_after_the_hard_state(tmp_path: Path) -> None:
    assert read_votes(tmp_path) is None
    with FileStorage(tmp_path) as s:
        assert read_votes(tmp_path) is None, "opening alone writes nothing"
        s.save_state(HardState(1, None))  # a term without a vote: nothing to log
        assert read_votes(tmp_path) == [], "created with the hard state: 'no vote' on record"
        s.save_state(HardState(2, NodeId("n2")))
        s.save_state(HardState(2, NodeId("n2")))  # the same vote again: logged once
        s.save_state(HardState(3, NodeId("n1")))
    votes = read_votes(tmp_path)
    assert votes is not None
    assert [(v.term, v.candidate) for v in votes] == [(2, "n2"), (3, "n1")]
    assert votes[0].time_ns <= votes[1].time_ns


def test_reopening_repairs_a_vote_the_log_missed(tmp_path: Path) -> None:
    """A crash between the hard state and the vote log: the vote is added at the next open."""
    with FileStorage(tmp_path) as s:
        s.save_state(HardState(4, NodeId("n3")))
    (tmp_path / "votes").write_text("")  # as if the crash came before the log line
    with FileStorage(tmp_path):
        pass
    votes = read_votes(tmp_path)
    assert votes is not None
    assert [(v.term, v.candidate) for v in votes] == [(4, "n3")]
    with FileStorage(tmp_path):  # nothing to repair the second time
        pass
    assert len(read_votes(tmp_path) or []) == 1


def test_a_torn_vote_line_is_skipped(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as s:
        s.save_state(HardState(1, NodeId("n1")))
    with (tmp_path / "votes").open("a") as f:
        f.write('{"term":2,"cand')
    assert [(v.term, v.candidate) for v in read_votes(tmp_path) or []] == [(1, "n1")]


def test_commit_marks_ride_with_the_next_append_and_change_no_entry(tmp_path: Path) -> None:
    with FileStorage(tmp_path) as s:
        s.append_log(entries(1, 3, 1))
        s.note_commit(3, 1, 1)
        assert read_data_dir(tmp_path).commits == [], "no write of its own"
        s.append_log(entries(4, 5, 2))
        s.note_commit(5, 2, 2)
    view = read_data_dir(tmp_path)  # the second mark was written at close
    assert [(c.index, c.term, c.leader_term) for c in view.commits] == [(3, 1, 1), (5, 2, 2)]
    assert all(isinstance(c, CommitMark) and c.time_ns > 0 for c in view.commits)
    assert [e.index for e in view.log] == [1, 2, 3, 4, 5]
    with FileStorage(tmp_path) as s:  # a writer reopens a WAL with COMMIT records
        assert [e.index for e in s.load_log()] == [1, 2, 3, 4, 5]
        s.append_log(entries(3, 3, 3))  # a suffix replacement after a mark
    assert [(e.index, e.term) for e in read_data_dir(tmp_path).log] == [(1, 1), (2, 1), (3, 3)]


def test_a_leader_notes_its_commits_and_nothing_it_learned_as_a_follower(tmp_path: Path) -> None:
    """Three nodes on memory transports, file storage: every mark is a leader's own decision,
    of an entry of its own term (a leader change under load is allowed: each leader's marks
    are its own), and the marks reach the last write."""

    async def main() -> int:
        net = MemoryNetwork()
        ids = ["n1", "n2", "n3"]
        nodes = [
            RaftNode(
                n,
                ids,
                net.join(NodeId(n)),
                FileStorage(tmp_path / n),
                KVStore(),
                tick_ms=10.0,
                seed=k,
                timeline=None,
            )
            for k, n in enumerate(ids)
        ]
        tasks = [asyncio.create_task(n.run()) for n in nodes]
        done = 0
        while done < 20:
            leader = next((n for n in nodes if n.is_leader()), None)
            if leader is None:
                await asyncio.sleep(0.01)
                continue
            with contextlib.suppress(RaftError):
                await leader.submit(b'{"op":"write","key":"k","value":%d}' % done)
                done += 1
        last = max(n.core.log.committed for n in nodes)
        for n in nodes:
            n.stop()
        await asyncio.gather(*tasks)
        for n in nodes:
            n.storage.close()
        return last

    last = asyncio.run(main())
    marks = {n: read_data_dir(tmp_path / n).commits for n in ("n1", "n2", "n3")}
    assert any(marks.values())
    for node, mine in marks.items():
        assert all(m.term == m.leader_term for m in mine), (node, mine)
        assert [m.index for m in mine] == sorted(m.index for m in mine), (node, mine)
    assert max(m.index for ms in marks.values() for m in ms) >= last >= 21


def test_consecutive_commits_of_the_leaders_term_keep_only_the_latest(tmp_path: Path) -> None:
    """The latest implies the others (Log Matching); an earlier term's commit is always kept."""
    with FileStorage(tmp_path) as s:
        s.append_log(entries(1, 6, 2))
        for index in (1, 2, 3):
            s.note_commit(index, 2, 2)
        s.note_commit(4, 1, 2)  # a leader of term 2 committing an entry of term 1: kept
        s.note_commit(5, 2, 2)
        s.note_commit(6, 2, 2)
        s.append_log(entries(7, 7, 2))
    marks = [(c.index, c.term, c.leader_term) for c in read_data_dir(tmp_path).commits]
    assert marks == [(3, 2, 2), (4, 1, 2), (6, 2, 2)]

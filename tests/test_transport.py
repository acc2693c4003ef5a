"""The wire format, MemoryTransport, and ZmqTransport on real 127.0.0.1 sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import msgspec
import pytest
import zmq
import zmq.asyncio
from hypothesis import given
from hypothesis import strategies as st

from raft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from raft.core.types import ConfState, EntryKind, LogEntry, NodeId, SnapshotMeta
from raft.transport import (
    RECV_BURST,
    MemoryNetwork,
    WireError,
    ZmqTransport,
    _model_frame,
    decode_frame,
    encode_frame,
)

A, B = NodeId("a"), NodeId("b")
ids = st.sampled_from([A, B, NodeId("n3")])
nat = st.integers(min_value=0, max_value=2**40)
entries = st.lists(
    st.builds(
        LogEntry,
        st.integers(1, 2**40),
        nat,
        st.binary(max_size=50),
        st.sampled_from(list(EntryKind)),
    ),
    max_size=5,
).map(tuple)
confs = st.builds(ConfState, st.frozensets(ids, min_size=1), st.frozensets(ids), st.frozensets(ids))
metas = st.builds(SnapshotMeta, nat, nat, confs)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(RequestVote, ids, ids, nat, nat, nat, st.booleans(), st.booleans()),
    st.builds(RequestVoteResponse, ids, ids, nat, st.booleans(), st.booleans()),
    st.builds(AppendEntries, ids, ids, nat, nat, nat, entries, nat),
    st.builds(AppendEntriesResponse, ids, ids, nat, st.booleans(), nat, nat, nat, nat),
    st.builds(Heartbeat, ids, ids, nat, nat, nat),
    st.builds(HeartbeatResponse, ids, ids, nat, nat),
    st.builds(InstallSnapshot, ids, ids, nat, metas, nat, st.binary(max_size=100), st.booleans()),
    st.builds(InstallSnapshotResponse, ids, ids, nat, nat, nat, nat),
    st.builds(TimeoutNow, ids, ids, nat),
)


@given(messages)
def test_wire_round_trip(msg: Message) -> None:
    assert decode_frame(encode_frame(msg, "c1"), "c1") == msg


def test_wire_refuses_foreign_old_malformed_and_oversized() -> None:
    frame = encode_frame(TimeoutNow(A, B, 3), "c1")
    with pytest.raises(WireError, match="cluster"):
        decode_frame(frame, "other")
    v, cluster, msg = msgspec.msgpack.decode(frame)
    with pytest.raises(WireError, match="version"):
        decode_frame(msgspec.msgpack.encode([99, cluster, msg]), "c1")
    for bad in (
        [77, *msg[1:]],  # no such kind
        [*msg, 5],  # a field too many
        msg[:-1],  # a field too few
        [msg[0], msg[1], msg[2], -1],  # a negative term
        [msg[0], "x" * 257, msg[2], msg[3]],  # a node id over MAX_NODE_ID
        [msg[0], msg[1], msg[2], "3"],  # a string for a number
    ):
        with pytest.raises(WireError, match="malformed"):
            decode_frame(msgspec.msgpack.encode([v, cluster, bad]), "c1")
    with pytest.raises(WireError, match="malformed"):
        decode_frame(b"\xff{", "c1")
    with pytest.raises(WireError, match="malformed"):
        decode_frame(json.dumps({"v": v, "cluster": cluster}).encode(), "c1")
    with pytest.raises(WireError, match="limit"):
        decode_frame(frame, "c1", max_bytes=10)


def test_memory_network_delivers_and_cuts() -> None:
    async def main() -> None:
        net = MemoryNetwork()
        ta, tb = net.join(A), net.join(B)
        await ta.send(TimeoutNow(A, B, 1))
        assert await tb.recv() == TimeoutNow(A, B, 1)
        net.cut(A, B)
        await ta.send(TimeoutNow(A, B, 2))
        net.heal()
        await ta.send(TimeoutNow(A, B, 3))
        assert await tb.recv() == TimeoutNow(A, B, 3)
        tb.close()
        await ta.send(TimeoutNow(A, B, 4))
        assert net.dropped == 2

    asyncio.run(main())


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Retry ``check`` (which sends and waits briefly) until it holds; fail after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.01)


async def _receives(
    sender: ZmqTransport, receiver: ZmqTransport, msg: Message, wait: float = 0.2
) -> bool:
    """Send ``msg`` (which may be dropped before the connection is up) and see it arrive."""
    await sender.send(msg)
    try:
        async with asyncio.timeout(wait):
            while True:
                if await receiver.recv() == msg:
                    return True
    except TimeoutError:
        return False


def _pair() -> tuple[ZmqTransport, ZmqTransport]:
    ta = ZmqTransport(A, "c1", "127.0.0.1:0", {})
    tb = ZmqTransport(B, "c1", "127.0.0.1:0", {A: ta.address})
    ta.connect(B, tb.address)
    return ta, tb


@pytest.mark.integration
def test_zmq_round_trip() -> None:
    async def main() -> None:
        ta, tb = _pair()
        try:
            assert ta.address.startswith("127.0.0.1:")
            await _until(lambda: _receives(ta, tb, Heartbeat(A, B, 1, 0)))
            await _until(lambda: _receives(tb, ta, HeartbeatResponse(B, A, 1)))
            big = AppendEntries(A, B, 2, 0, 0, (LogEntry(1, 2, bytes(range(256)) * 4000),), 0)
            await _until(lambda: _receives(ta, tb, big))
            await ta.send(TimeoutNow(A, NodeId("nobody"), 1))  # unknown peer: dropped
            assert ta.dropped_sends >= 1
        finally:
            ta.close()
            tb.close()

    asyncio.run(main())


@pytest.mark.integration
def test_zmq_drops_bad_frames_and_keeps_serving() -> None:
    async def main() -> None:
        ta, tb = _pair()
        ctx = zmq.asyncio.Context()
        raw = ctx.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(f"tcp://{ta.address}")
        try:
            await _until(lambda: _receives(tb, ta, TimeoutNow(B, A, 1)))
            good = encode_frame(Heartbeat(B, A, 7, 0), "c1")
            bad = [
                [b"not msgpack at all"],
                [encode_frame(Heartbeat(B, A, 7, 0), "another-cluster")],
                [msgspec.msgpack.encode([1, *msgspec.msgpack.decode(good)[1:]])],
                [msgspec.msgpack.encode([2, "c1", [55, "b", "a", 7, 0, 0]])],
                [encode_frame(Heartbeat(B, NodeId("zz"), 7, 0), "c1")],
                [good, good],  # two frames in one message
            ]
            for parts in bad:
                await raw.send_multipart(parts)
            await raw.send(b"x" * (ta.max_frame_bytes + 1))  # zmq drops the connection
            # the raw socket's good frame after its garbage is still served
            await raw.send(good)
            async with asyncio.timeout(10):
                assert await ta.recv() == Heartbeat(B, A, 7, 0)
            assert ta.dropped_frames == len(bad)
            await _until(lambda: _receives(tb, ta, TimeoutNow(B, A, 2)))
        finally:
            raw.close(linger=0)
            ctx.term()
            ta.close()
            tb.close()

    asyncio.run(main())


@pytest.mark.parametrize("address", ["0.0.0.0:0", "10.1.2.3:0", "[::]:0", "[fd00::1]:0"])
def test_without_keys_only_loopback_is_bound(address: str) -> None:
    """No keys: a non-loopback address would expose unauthenticated traffic to the network."""
    with pytest.raises(ValueError, match="without CURVE keys"):
        ZmqTransport(A, "c1", address, {})


@pytest.mark.integration
def test_without_keys_loopback_ipv6_and_insecure_wildcard_bind() -> None:
    """[::1] is loopback; 0.0.0.0 binds when the caller says insecure=True in so many words."""
    for address, insecure in (("[::1]:0", False), ("0.0.0.0:0", True)):
        t = ZmqTransport(A, "c1", address, {}, insecure=insecure)
        try:
            host, port = t.address.rsplit(":", 1)
            assert host == address.rsplit(":", 1)[0]
            assert int(port) > 0
        finally:
            t.close()


@given(messages)
def test_hand_encoder_writes_what_the_schema_writes(msg: Message) -> None:
    """The hot-path encoder (tuples) emits exactly the bytes msgspec writes for the wire
    structs the decoder validates against."""
    assert encode_frame(msg, "c1") == _model_frame(msg, "c1")


def test_hand_encoder_is_checked_against_the_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    """Teeth: an encoder that writes a field out of order no longer matches the schema."""
    from raft import wire

    fields = wire._fields

    def swapped(msg: Message, entries: msgspec.Raw | None) -> tuple[object, ...]:
        out = fields(msg, entries)
        return (*out[:4], *reversed(out[4:])) if isinstance(msg, AppendEntries) else out

    monkeypatch.setattr(wire, "_fields", swapped)
    msg = AppendEntries(A, B, 3, 4, 3, (LogEntry(5, 3, b"x"),), 4)
    assert encode_frame(msg, "c1") != _model_frame(msg, "c1")


def test_broadcast_shares_one_encoding_of_the_entries() -> None:
    run = tuple(LogEntry(i, 3, b"cmd%d" % i) for i in range(5, 9))
    msgs: list[Message] = [AppendEntries(A, NodeId(p), 3, 4, 3, run, 4) for p in ("b", "n3")]
    sent: list[tuple[Message, msgspec.Raw | None]] = []

    class Probe(ZmqTransport):
        def send_nowait(self, msg: Message, entries: msgspec.Raw | None = None) -> None:
            sent.append((msg, entries))
            super().send_nowait(msg, entries)

    t = Probe(A, "c1", "127.0.0.1:0", {})
    try:
        t.send_batch([*msgs, Heartbeat(A, B, 3, 4)])
    finally:
        t.close()
    assert [m for m, _ in sent] == [*msgs, Heartbeat(A, B, 3, 4)]
    assert sent[0][1] is not None
    assert sent[0][1] is sent[1][1]
    for m, run in sent[:2]:
        assert decode_frame(encode_frame(m, "c1", run), "c1") == m


@pytest.mark.integration
def test_zmq_flood_is_received_in_bursts_without_loss() -> None:
    """More frames than one reader burst: all arrive, in order (the reader comes back for
    frames the edge-triggered descriptor no longer announces)."""

    async def main() -> None:
        ta, tb = _pair()
        try:
            await _until(lambda: _receives(ta, tb, Heartbeat(A, B, 1, 0)))
            n = 10 * RECV_BURST
            ta.send_batch([Heartbeat(A, B, 2, i) for i in range(n)])
            got: list[int] = []
            async with asyncio.timeout(10):
                while len(got) < n:
                    m = await tb.recv()
                    if isinstance(m, Heartbeat) and m.term == 2:
                        got.append(m.commit)
            assert got == list(range(n))
        finally:
            ta.close()
            tb.close()

    asyncio.run(main())


@pytest.mark.integration
def test_zmq_receiver_gets_messages_from_the_reader_callback() -> None:
    """``set_receiver``: each message goes straight to the callback, in order, nothing
    queued for ``recv``, and ``after_burst`` follows every burst (so after the last message);
    back to queueing once it is cleared."""

    async def main() -> None:
        ta, tb = _pair()
        got: list[Message] = []
        seen_at_burst_end: list[int] = []
        tb.set_receiver(got.append, after_burst=lambda: seen_at_burst_end.append(len(got)))
        try:
            want = [Heartbeat(A, B, 1, i) for i in range(50)]
            async with asyncio.timeout(10):
                while not got:  # the first sends may precede the connection (dropped)
                    await ta.send(Heartbeat(A, B, 0, 0))
                    await asyncio.sleep(0.01)
                ta.send_batch(list(want))
                while len(batch := [m for m in got if m.term == 1]) < len(want):
                    await asyncio.sleep(0.001)
            assert batch == want
            assert seen_at_burst_end[-1] == len(got), "no burst end after the last message"
            assert seen_at_burst_end == sorted(set(seen_at_burst_end)), "a burst of none"
            tb.set_receiver(None)
            count, bursts = len(got), len(seen_at_burst_end)
            await _until(lambda: _receives(ta, tb, TimeoutNow(A, B, 9)))
            assert len(got) == count, "nothing reaches the cleared receiver"
            assert len(seen_at_burst_end) == bursts
        finally:
            ta.close()
            tb.close()

    asyncio.run(main())

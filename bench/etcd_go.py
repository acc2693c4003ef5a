"""etcd's own Go client as ``bench.cluster``'s etcd load generator (``bench/etcdload``).

``build()`` compiles ``bench/etcdload`` (its ``go.mod`` and ``go.sum`` pin
``go.etcd.io/etcd/client/v3``) with the Go toolchain on PATH into ``~/.cache/orbital-bench``
(a binary per source digest and Go version, so it is built once); the Go module proxy serves
the modules on the first build. ``window()`` runs it for one measured window against a
running etcd and returns its JSON: writes, writes/s, latency p50/p99/max, errors, and the
generator's own CPU (``client_cpu_s``, ``client_cpu_s_per_1000_writes``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parent / "etcdload"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "orbital-bench"


def build(cache: Path = CACHE) -> tuple[Path | None, str]:
    """The load generator's binary (built if needed), or None and why not."""
    go = shutil.which("go")
    if go is None:
        return None, "go is not on the PATH"
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=False)
    digest = hashlib.sha256(version.stdout.encode())
    for name in ("main.go", "go.mod", "go.sum"):
        digest.update((SOURCE / name).read_bytes())
    binary = cache / f"etcdload-{digest.hexdigest()[:16]}"
    if binary.exists():
        return binary, "cached"
    cache.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOFLAGS="-mod=readonly -buildvcs=false")
    done = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=SOURCE,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None, f"go build failed: {done.stderr.strip()[-400:]}"
    return binary, "built"


async def window(
    binary: Path,
    endpoints: list[str],
    clients: int,
    seconds: float,
    warmup: float,
    *,
    value_bytes: int = 100,
    conns: int = 1,
    key_prefix: str = "k",
) -> dict[str, Any]:
    """One closed-loop window of ``clients`` etcd clients (see ``bench/etcdload/main.go``)."""
    argv = [
        str(binary),
        "-endpoints",
        ",".join(endpoints),
        "-clients",
        str(clients),
        "-conns",
        str(conns),
        "-seconds",
        str(seconds),
        "-warmup",
        str(warmup),
        "-value-bytes",
        str(value_bytes),
        "-key-prefix",
        key_prefix,
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), warmup + seconds + 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError("etcdload did not finish in time") from None
    if proc.returncode != 0:
        raise RuntimeError(f"etcdload exited {proc.returncode}: {err.decode()[-300:]}")
    result: dict[str, Any] = json.loads(out)
    return result

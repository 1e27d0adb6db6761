"""symopt._malloc: training workers keep freed memory instead of faulting it in every step.

The reference is the kernel's own count of minor page faults (``getrusage``) while a loop
allocates, fills and frees the same 1 MiB block: 256 pages would fault in every time the
block is mapped afresh, none once it is reused from the heap.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings: Linux only")

DASK_ENV = {"MALLOC_TRIM_THRESHOLD_": "65536"}  # what Dask's nanny gives its workers

_LOOP = """
import resource, numpy as np
def faults_per_block(n=40):
    for _ in range(3):  # warm-up: glibc's adaptive thresholds settle after the first blocks
        np.ones(1 << 18, np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        block = np.ones(1 << 18, np.float32)  # 1 MiB, every page written
        del block
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n
"""


def _faults(keep: bool, env: dict[str, str]) -> float:
    code = _LOOP + ("from symopt._malloc import keep_freed_memory; assert keep_freed_memory()\n" if keep else "")
    code += "print(faults_per_block())"
    # the caller's own MALLOC_* settings left out (a Dask cluster started in this process leaves its own)
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def _glibc() -> bool:
    import platform

    return platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not _glibc(), reason="the thresholds are glibc's")
def test_dasks_setting_faults_every_block_in_and_keep_freed_memory_stops_it() -> None:
    faults = {"dask": _faults(False, DASK_ENV), "dask+keep": _faults(True, DASK_ENV), "plain": _faults(False, {})}
    # the negative control: under the nanny's setting the block is mapped afresh each time;
    # in a plain process glibc's adaptive thresholds already reuse it
    assert faults["dask"] > 200 and faults["dask+keep"] < 5 and faults["plain"] < 5, faults


@pytest.mark.skipif(not _glibc(), reason="the thresholds are glibc's")
def test_engine_tasks_keep_freed_memory_in_dask_workers() -> None:
    """A worker of the sweep's local cluster (Dask's nanny environment): the engine's
    per-task preparation stops the faults there."""
    pytest.importorskip("distributed")
    from symopt.sweep import engine

    namespace: dict = {}
    exec(_LOOP, namespace)
    faults_per_block = namespace["faults_per_block"]

    def in_worker() -> tuple[float, float, str]:
        before = faults_per_block()
        engine._prepare_process()
        return before, faults_per_block(), os.environ.get("MALLOC_TRIM_THRESHOLD_", "")

    import dask

    # Dask's own default, set here so that the test does not depend on it
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 65536}):
        with engine.dask_client(None, 1) as client:
            before, after, env = client.submit(in_worker, pure=False).result()
    assert env == DASK_ENV["MALLOC_TRIM_THRESHOLD_"]
    assert before > 200 and after < 5


def test_the_callers_own_process_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("distributed")
    from symopt.sweep import engine

    calls: list[int] = []
    monkeypatch.setattr(engine, "keep_freed_memory", lambda: calls.append(1))
    engine._prepare_process()  # a task run in the caller's process (bench-mnist without workers)
    assert not engine._in_worker() and calls == []

"""``filmstyle worker``: Prefect's process worker, stopped cleanly by SIGTERM or Ctrl-C.

Prefect's own worker, given SIGTERM, waited about 40 s for its flow run and logged connection
errors once the server was gone; the flow run stayed "Running" on the server. This supervisor
runs ``prefect worker start`` as a child and, on SIGTERM/SIGINT:

1. freezes the worker (SIGSTOP), so it neither picks up new runs nor reports the ones being
   stopped as crashed while we requeue them;
2. stops each flow run it was running (the processes below the worker whose environment names
   ``PREFECT__FLOW_RUN_ID``): SIGTERM, then SIGKILL after ``GRACE`` seconds;
3. marks those runs Scheduled now, state name "Requeued", with a message saying why: the next
   worker of the pool resumes them from their committed chunks;
4. kills the frozen worker and exits 0. A server that does not answer within ``GRACE`` seconds
   is said in one line, not retried for minutes.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

GRACE = 10.0


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(pid: int) -> list[int]:
    kids, out, stack = _children(), [], [pid]
    while stack:
        for c in kids.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def _flow_run_id(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(b"PREFECT__FLOW_RUN_ID="):
                    return item.split(b"=", 1)[1].decode() or None
    except OSError:
        pass
    return None


def flow_run_processes(worker_pid: int) -> dict[str, list[int]]:
    """Flow run id -> its processes (the run's process and everything below it)."""
    runs: dict[str, list[int]] = {}
    for pid in descendants(worker_pid):
        run_id = _flow_run_id(pid)
        if run_id:
            runs.setdefault(run_id, []).append(pid)
    return runs


def _signal(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_processes(pids: list[int], grace: float = GRACE) -> None:
    """SIGTERM, then SIGKILL whatever still runs after ``grace`` seconds."""
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    _signal([p for p in pids if _alive(p)], signal.SIGKILL)


def requeue(run_ids: list[str], why: str, timeout: float = GRACE) -> str | None:
    """Mark the runs Scheduled now ("Requeued"); returns an error line if the server did not answer."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    from .queue import REQUEUED

    error: list[str] = []

    def call():
        try:
            with get_client(sync_client=True) as client:
                for run_id in run_ids:
                    client.set_flow_run_state(UUID(run_id), Scheduled(
                        scheduled_time=datetime.now(timezone.utc), name=REQUEUED, message=why), force=True)
        except Exception as e:  # reported in one line by the caller
            error.append(f"{type(e).__name__}: {e}")

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        return f"the Prefect server did not answer within {timeout:.0f}s"
    return error[0] if error else None


def run(pool: str, *, limit: int | None = None, name: str | None = None, log=print) -> int:
    """Run a process worker for ``pool`` until it exits or we are told to stop; returns the exit code."""
    from .server import connect

    connect()
    cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    if limit:
        cmd += ["--limit", str(limit)]
    if name:
        cmd += ["--name", name]
    child = subprocess.Popen(cmd, start_new_session=True)
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    while not stop.is_set() and child.poll() is None:
        stop.wait(0.5)
    if child.poll() is not None:
        return child.returncode
    os.kill(child.pid, signal.SIGSTOP)
    runs = flow_run_processes(child.pid)
    log(f"worker: {signal.Signals(received[0]).name}: stopping {len(runs)} flow run(s)")
    for pids in runs.values():
        threading.Thread(target=stop_processes, args=(pids,), daemon=True).start()
    deadline = time.monotonic() + GRACE + 2
    while time.monotonic() < deadline and any(_alive(p) for pids in runs.values() for p in pids):
        time.sleep(0.2)
    if runs:
        why = f"its worker on {os.uname().nodename} was stopped; the next worker resumes it from its committed chunks"
        error = requeue(list(runs), why)
        log(f"worker: requeued {', '.join(r[:8] for r in runs)}" if error is None
            else f"worker: could not requeue {', '.join(r[:8] for r in runs)}: {error}")
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()
    return 0

"""Which Ray a render runs on: join a cluster, or start a private local Ray, and say which in one line.

Addresses (``--ray-address`` or $RAY_ADDRESS):

* ``HOST:PORT``: the GCS of a running cluster (the head's ``ray start --head --port PORT``), joined
  from a machine inside the cluster's network (a node of it, or one that reaches every node).
* ``auto``: the cluster ``ray start`` started on this machine, the one recorded in Ray's temp dir
  ($RAY_TMPDIR, default /tmp/ray). Never "any Ray process found on this machine", which is what
  Ray's own ``auto`` falls back to, another user's included.
* ``local``: a private Ray for this render only, even on a machine where a cluster runs.
* none: the cluster ``ray start`` runs on this machine when there is one (a head node), else a
  private local Ray. Either way one line says which Ray was used and how to choose the other.
* ``ray://`` (Ray Client) is refused in one line: a render reads and writes its work folder and
  flow cache from every node, so the machine that starts it must be able to reach the nodes and
  the storage anyway; run ``filmstyle`` on the head (``ray attach``) or queue the render for a
  Prefect worker on the head (docs/orchestration.md).

Authentication (Ray >= 2.52 token auth): a cluster started where a token exists (``ray
get-auth-token --generate`` writes ~/.ray/auth_token; so does the first local ``ray.init``) only
accepts clients that send it, but Ray enables token mode by itself only for a local cluster, never
for an explicit address, so ``ray status --address`` and joining failed with an opaque
``Unauthenticated`` flood. Here, when $RAY_AUTH_MODE is unset and a token is available ($RAY_AUTH_TOKEN,
the file $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token), this process (and the Ray workers it starts)
runs in token mode; a cluster without authentication accepts a client that sends a token
(checked with Ray 2.60), so this is safe either way.

Failures are one line (``ClusterError``, exit code 2) with what to do: nothing listening at the
address (a TCP check first: ``ray.init`` waits forever on a port nobody answers), a missing or
wrong token, any other refusal. Ray's own C++ log lines during the join go to a log file, and its
"raylet died" state dumps, which it prints on the driver's stdout, to the ``filmstyle.ray`` logger
at debug level; ``-v`` keeps both on the terminal.
"""
from __future__ import annotations

import logging
import os
import socket
import tempfile
from pathlib import Path

import ray

from pipeline.errors import ClusterError
from pipeline.fds import fds_to

log = logging.getLogger("filmstyle.ray")

CONNECT_CHECK_S = 5.0  # TCP connect to the GCS port before ray.init (which never gives up on a silent port)

RAY_CLIENT_REFUSED = (
    "Ray Client addresses (ray://) are not supported: the machine that starts a render reads and writes "
    "its work folder and flow cache beside the nodes; run filmstyle on the head node (`ray attach`, then "
    "--ray-address auto) or queue the render for a Prefect worker there (docs/orchestration.md)")

_joined: dict = {}  # what connect() said about the Ray this process uses (kept for a later call)


# ---------------------------------------------------------------- finding the cluster


def ray_temp_root() -> str:
    """Ray's temp dir on this machine ($RAY_TMPDIR/ray, default /tmp/ray): where `ray start` records
    the cluster it started."""
    from ray._private.utils import get_ray_address_file

    return os.path.dirname(get_ray_address_file(None))


def _reachable(host: str, port: int, timeout: float = CONNECT_CHECK_S) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"--ray-address {address!r}: expected HOST:PORT (the head's GCS address, "
                           f"`ray start --head --port PORT`), auto or local")
    return host, int(port)


def running_cluster() -> str | None:
    """The GCS address of the cluster `ray start` started on this machine, if it still answers."""
    from ray._private.services import find_bootstrap_address

    address = find_bootstrap_address(None)
    if not address:
        return None
    host, port = split_address(address)
    return address if _reachable(host, port, timeout=1.0) else None


def resolve(address: str | None) -> tuple[str | None, str]:
    """(GCS address to join, or None for a private local Ray; the line that says so)."""
    given = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    if given.startswith("ray://"):
        raise ClusterError(RAY_CLIENT_REFUSED)
    if given == "local":
        return None, "Ray: a private local Ray (--ray-address local)"
    if given in ("", "auto"):
        found = running_cluster()
        where = f"{ray_temp_root()}/ray_current_cluster"
        if found:
            how = "--ray-address local for a private Ray" if not given else "its address to choose another"
            return found, f"Ray: joined the cluster `ray start` runs on this machine, {found} (recorded in {where}; {how})"
        if given == "auto":
            raise ClusterError(f"--ray-address auto: no Ray cluster started by `ray start` runs on this machine "
                               f"(nothing answers at the address in {where}; $RAY_TMPDIR must be the one the "
                               f"cluster was started with); give the head's address HOST:PORT")
        return None, "Ray: a private local Ray (no cluster runs on this machine; --ray-address HOST:PORT joins one)"
    split_address(given)
    return given, f"Ray: joined the cluster at {given}"


def preflight(address: str | None) -> None:
    """The checks that need no Ray (address form, Ray Client, nothing listening), so a bad address is
    reported before the Prefect server and the input are touched."""
    target, _ = resolve(address)
    if target:
        _check_listening(target)


def _check_listening(address: str) -> None:
    host, port = split_address(address)
    if not _reachable(host, port):
        raise ClusterError(f"nothing answers at {address} (within {CONNECT_CHECK_S:.0f}s): start the head there "
                           f"with `ray start --head --port {port}`, or check the address and the firewall")


# ---------------------------------------------------------------- authentication


def token_source() -> str | None:
    """Where this machine's Ray token comes from, as Ray looks for it; None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "$RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return f"$RAY_AUTH_TOKEN_PATH ({path})" if Path(path).expanduser().is_file() else None
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


def _use_token_if_available() -> None:
    """Token mode for this process and its children when the user has not chosen a mode and a token
    exists (see the module docstring)."""
    if os.environ.get("RAY_AUTH_MODE") is None and token_source():
        os.environ["RAY_AUTH_MODE"] = "token"
        try:  # Ray caches its config at import: refresh it, as its own token setup does
            from ray._raylet import Config

            Config.initialize("")
        except Exception as e:  # pragma: no cover - a Ray without the refresh reads the env at init
            log.debug("Ray config refresh: %s", e)


def _auth_error(address: str) -> ClusterError:
    src = token_source()
    mode = os.environ.get("RAY_AUTH_MODE", "unset")
    fix = ("copy the head's token (`ray get-auth-token` on the head) into $RAY_AUTH_TOKEN or ~/.ray/auth_token "
           "on this machine")
    if mode == "disabled":
        return ClusterError(f"the Ray cluster at {address} requires its authentication token and RAY_AUTH_MODE is "
                            f"'disabled' here: unset it and {fix}")
    if src is None:
        return ClusterError(f"the Ray cluster at {address} requires its authentication token and this machine has "
                            f"none: {fix}")
    return ClusterError(f"the Ray cluster at {address} rejected the token from {src}: {fix}")


def _join_error(address: str, e: BaseException, ray_log: str) -> ClusterError:
    text = f"{ray_log}\n{e}"
    if "Unauthenticated" in text or "InvalidAuthToken" in text or "authentication token" in text.lower():
        return _auth_error(address)
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    return ClusterError(f"could not join the Ray cluster at {address}: {first} (is it the head's GCS port? "
                        f"-v shows Ray's log)")


# ---------------------------------------------------------------- connecting


def connect(address: str | None = None, *, num_cpus: int | None = None, verbose: bool = False) -> dict:
    """Join the cluster ``address`` names (see the module docstring), reuse this process's Ray, or start
    a private local one. Returns the GCS address, node count, CPU/GPU totals and the line to show.

    $FILMSTYLE_RAY_RUNTIME_ENV (JSON, e.g. '{"working_dir": "."}') is passed as the job's
    runtime_env when joining a cluster whose nodes do not have filmstyle installed.
    """
    if not ray.is_initialized():
        _joined.clear()
        target, note = resolve(address)
        opts = dict(logging_level=logging.INFO if verbose else logging.WARNING, log_to_driver=verbose)
        if target:
            _join(target, opts, verbose)
        else:
            cores = num_cpus or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
            ray.init(address="local", num_cpus=cores, include_dashboard=False, **opts)
        if not verbose:
            _route_ray_error_prints()
        _joined["note"] = note
    try:
        gcs = ray.get_runtime_context().gcs_address
    except Exception:
        gcs = address or ""
    nodes = cluster_nodes()
    return {"address": gcs, "nodes": len(nodes), "note": _joined.get("note", ""),
            "resources": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}}


def _join(address: str, opts: dict, verbose: bool) -> None:
    import json

    _check_listening(address)
    _use_token_if_available()
    runtime_env = os.environ.get("FILMSTYLE_RAY_RUNTIME_ENV")
    if runtime_env:
        opts["runtime_env"] = json.loads(runtime_env)
    if verbose:
        try:
            ray.init(address=address, **opts)
        except Exception as e:
            raise _join_error(address, e, "") from None
        return
    with tempfile.NamedTemporaryFile("r", prefix="filmstyle-ray-join-", suffix=".log") as ray_log:
        try:
            with fds_to(ray_log.name, fds=(2,)):  # Ray's C++ retry lines ("Failed to get cluster ID ...")
                ray.init(address=address, **opts)
        except Exception as e:
            raise _join_error(address, e, Path(ray_log.name).read_text(errors="replace")) from None


def _route_ray_error_prints() -> None:
    """Ray prints errors pushed to the driver (a raylet's death with its 20-line state dump) straight to
    stdout from a background thread; send those to our logger at debug level instead (-v keeps them).
    The render reports what it lost in its own words (tasks/ray_exec.py)."""
    import ray._private.worker as rw

    original = rw.print_to_stdstream
    if getattr(original, "_filmstyle", False):
        return

    def routed(data, ignore_prefix: bool):
        if data.get("pid") == "raylet":
            for line in data.get("lines", []):
                log.debug("ray: %s", line)
            return
        original(data, ignore_prefix)

    routed._filmstyle = True
    rw.print_to_stdstream = routed


def cluster_nodes() -> list[dict]:
    """Alive nodes with their CPU and GPU counts."""
    return [{"id": n["NodeID"], "cpus": float(n["Resources"].get("CPU", 0)), "gpus": float(n["Resources"].get("GPU", 0))}
            for n in ray.nodes() if n.get("Alive")]

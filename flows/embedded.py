"""Run the flows from the CLI on the embedded default: no server to start by hand.

* Prefect: the API named by PREFECT_API_URL when one is configured (a server, Prefect Cloud, a
  test harness); else Prefect's temporary local server, started here with its output sent to
  CACHE/prefect-server.log so the terminal shows our progress, not the server's.
* Ray: --ray-address / $RAY_ADDRESS, the cluster `ray start` runs on this machine, or a private
  local Ray sized to the machine (tasks/ray_connect.py; joined or started while the Prefect server
  starts).
* Output: one progress line per stage step on stderr; Prefect's own logging at WARNING (INFO
  with -v), and its failure tracebacks dropped (the CLI prints a FilmstyleError as one line).

Nothing here is imported by pipeline/: the CLI imports this module only for ``--engine prefect``.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

from pipeline.errors import FilmstyleError
from pipeline.fds import fds_to


def _prefect_env(verbose: bool) -> None:
    """Settings Prefect reads when it is first imported (the user's own settings win)."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "false")
    # Prefect waits 20 s by default; a first start (a new database, its migrations) took longer than
    # that on a 2-core machine busy with a test suite.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


class _DropRunFailures(logging.Filter):
    """Drop Prefect's ERROR records about failed task/flow runs: the CLI reports the error itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.name.startswith(("prefect.task_runs",
                                                                                 "prefect.flow_runs")))


def configure_output(*, verbose: bool, quiet: bool) -> None:
    """Progress lines on stderr; Prefect's console quiet unless -v."""
    ours = logging.getLogger("filmstyle")
    ours.setLevel(logging.INFO)
    if not verbose and not any(getattr(h, "_filmstyle", False) for h in ours.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.setLevel(logging.WARNING if quiet else logging.INFO)
        handler._filmstyle = True
        ours.addHandler(handler)
        ours.propagate = False
    if not verbose:
        # Ray's notice that the local cluster it starts uses token authentication (the default).
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        import prefect.main  # noqa: F401  (sets up Prefect's logging: its console handler is on the root logger)

        names = ["", *[n for n in logging.root.manager.loggerDict if n.startswith("prefect")]]
        for name in names:
            for h in logging.getLogger(name).handlers:
                if not any(isinstance(f, _DropRunFailures) for f in h.filters):
                    h.addFilter(_DropRunFailures())


def _needs_server() -> bool:
    from prefect.settings import get_current_settings

    return not get_current_settings().api.url


class _Server:
    """Prefect's temporary server (the one Prefect would start on first use), started in a background
    thread with its output in a log."""

    def __init__(self, log_path: Path):
        self.log_path, self.error, self.abandoned, self.proc = log_path, None, False, None
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._start, name="prefect-server", daemon=True)
        self.thread.start()

    def _start(self) -> None:
        from prefect.server.api.server import SubprocessASGIServer  # imported here: it takes seconds

        server = SubprocessASGIServer()
        if server.running:
            return
        launch = server._run_uvicorn_command

        def quiet_launch():
            with self.lock, fds_to(self.log_path):
                proc = self.proc = launch()
                if self.abandoned:  # the render failed while the server process was being started
                    proc.kill()
                return proc

        server._run_uvicorn_command = quiet_launch
        try:
            server.start()
        except BaseException as e:  # reported by wait()
            self.error = e

    def wait(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise FilmstyleError(f"cannot start Prefect's local server: {self.error} (see {self.log_path})")

    def abandon(self) -> None:
        """Stop a server still starting, without waiting for it: the render failed before it was needed
        (that failure is the one to report, within seconds, not this server's start)."""
        with self.lock:
            self.abandoned = True
            if self.proc is not None:
                self.proc.kill()


_server: _Server | None = None


def warm_up(cfg, *, verbose: bool = False) -> None:
    """Start Prefect's temporary server now, in the background, if no API is configured (it takes
    5-10 s: the CLI's checks, imports and Ray's start overlap with it)."""
    global _server
    from pipeline.paths import cache_root

    _prefect_env(verbose)
    if _server is None and _needs_server():
        log_path = cache_root(cfg.cache_dir) / "prefect-server.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        _server = _Server(log_path)


def run(kind: str, cfg, *, ray_address: str | None = None, verbose: bool = False, quiet: bool = False,
        checked: bool = False) -> dict:
    """Run the ``render``, ``restyle`` or ``precompute-flow`` flow for ``cfg`` (a RenderConfig); returns
    its report as a dict. A FilmstyleError from any task or worker is raised as itself."""
    from tasks import ray_connect, ray_exec

    ray_connect.preflight(ray_address)
    warm_up(cfg, verbose=verbose)
    from flows import render as F

    configure_output(verbose=verbose, quiet=quiet)
    try:
        ray_connect.connect(ray_address, verbose=verbose)
    except BaseException:
        if _server is not None:
            _server.abandon()
        raise
    if _server is not None:
        _server.wait()
    options = {k: v for k, v in cfg.to_dict().items() if k not in ("input", "output", "style")}
    try:
        if kind == "render":
            return F.render_flow(cfg.input, cfg.output, cfg.style, options, ray_address, checked)
        if kind == "restyle":
            return F.restyle_flow(cfg.input, cfg.output, cfg.style, options, ray_address, checked)
        if kind == "precompute-flow":
            return F.precompute_flow(cfg.input, options, ray_address, checked)
        raise ValueError(f"unknown flow {kind!r}")
    except Exception as e:
        inner = ray_exec.unwrap(e)
        if isinstance(inner, FilmstyleError) and inner is not e:
            raise inner from None
        raise

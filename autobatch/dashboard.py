"""``autobatch dashboard``: optuna-dashboard on the study storage.

optuna-dashboard does the viewing; this module only opens the storage the way autobatch does
(``open_storage``: masked URLs, one-line errors), refuses a storage with nothing in it (the
dashboard opens storages with table creation skipped), binds the port before anything else
is written, serves the dashboard's WSGI app with the standard library's server (as
``optuna_dashboard.run_server`` does, minus the per-request log lines), and meanwhile, in a
background thread, refreshes each autobatch study's recommendation note and names the metric of
studies made before metric names (so the page is up at once, the notes follow). Ctrl-C stops it
cleanly: ``serve`` returns.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
from pathlib import Path
from typing import Callable, Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
from sqlalchemy.engine import make_url

from . import records as R
from .errors import AutobatchError, NoStudiesError
from .recommender import answer_key, publish, recommend_study
from .storage import mask_url, open_storage, open_study, resolve_url

Say = Callable[[str], None]


def serve(storage: Optional[str], *, host: str = "127.0.0.1", port: int = 8080,
          say: Say = print) -> None:
    """Serve optuna-dashboard on ``storage`` at ``host:port`` until Ctrl-C."""
    import optuna_dashboard  # only needed here: keeps ``import autobatch.dashboard`` light

    url = resolve_url(storage)
    backend = open_existing(url)
    server = bind(host, port, optuna_dashboard.wsgi(backend))
    try:
        threading.Thread(target=_refresh_quietly, args=(backend, say), name="autobatch-notes", daemon=True).start()
        say(f"optuna-dashboard on {address(host, port)} for {mask_url(url)} — Ctrl-C to stop")
        if not is_loopback(host):
            say(f"warning: optuna-dashboard has no authentication and exposes write endpoints "
                f"(notes, trial states, deleting studies): anyone who can reach {host}:{port} "
                "can change your studies")
        server.serve_forever()
    except KeyboardInterrupt:
        say("dashboard stopped")
    finally:
        server.server_close()


def open_existing(url: str) -> optuna.storages.RDBStorage:
    """The storage at ``url`` if it holds at least one study; never creates anything there."""
    empty = AutobatchError(f"no autobatch studies in {mask_url(url)} yet; create one with "
                           "autobatch tune, or pass --storage")
    database = _sqlite_path(url)
    if database is not None and not database.exists():
        raise empty  # open_storage would create an empty file (and its folder)
    try:
        backend = open_storage(url, create_tables=False)
    except NoStudiesError:
        raise empty from None
    if not backend.get_all_studies():
        raise empty
    return backend


def bind(host: str, port: int, app) -> WSGIServer:  # type: ignore[no-untyped-def]
    """A WSGI server listening on ``host:port``: a port in use is a user error."""
    server_class = _IPv6Server if ":" in host else WSGIServer
    try:
        return make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise AutobatchError(f"port {port} on {host} is in use; pass --port") from None
        reason = exc.strerror or str(exc)
        raise AutobatchError(f"cannot listen on {host}:{port}: {reason}; pass --host or --port") from None


def _refresh_quietly(backend: optuna.storages.BaseStorage, say: Say) -> None:
    """``refresh_notes`` off the serving thread; a failure is a line, never a dead server."""
    try:
        refresh_notes(backend, say)
    except Exception as exc:  # noqa: BLE001 - the dashboard keeps serving what is stored
        say(f"recommendation notes not refreshed: {type(exc).__name__}: {exc}")


def refresh_notes(backend: optuna.storages.BaseStorage, say: Say) -> list[str]:
    """Recompute and publish the recommendation (study attribute and dashboard note) of every
    autobatch study in the open ``backend``, and name the metric of those that do not; a study
    that cannot have a recommendation yet is skipped with a line. Returns the names of the
    studies refreshed."""
    refreshed = []
    for summary in backend.get_all_studies():
        if R.STUDY_SPEC not in summary.user_attrs:
            continue  # not an autobatch study: leave it alone
        name = summary.study_name
        study = open_study(backend, name)
        if not study.metric_names:  # made before studies named their metric
            spec = summary.user_attrs[R.STUDY_SPEC]
            study.set_metric_names([((spec.get("recipe") or {}).get("metric") or "accuracy").rsplit(":", 1)[-1]])
        key = answer_key(study)  # before the fit: what the stored answer answers
        try:
            rec = recommend_study(study)
        except AutobatchError as exc:
            say(f"{name}: no recommendation note ({exc})")
            continue
        publish(study, rec, key)
        refreshed.append(name)
    if refreshed:
        say(f"recommendation notes refreshed: {', '.join(refreshed)}")
    return refreshed


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it is reachable from elsewhere
        return False


def address(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _sqlite_path(url: str) -> Optional[Path]:
    try:
        parsed = make_url(url)
    except Exception:  # open_storage reports a malformed URL
        return None
    if parsed.drivername.startswith("sqlite") and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database)
    return None


class _IPv6Server(WSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """No line per request (the SPA polls the API every few seconds); errors still print."""

    def address_string(self) -> str:  # no reverse DNS lookup per request
        return str(self.client_address[0])

    def log_request(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        pass

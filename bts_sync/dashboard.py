"""The web dashboard: a server-rendered page, a JSON API, actions and ``/metrics``.

Flask renders the page and an HTML fragment of it. A few lines of plain
JavaScript fetch the fragment every two seconds, so nothing needs a build step.
Waitress serves the application (see ``serve``).

Access rules:

* Bound to a loopback address, reads need no token, but the ``Host`` header
  must name a loopback host, so a web page that rebinds its own domain to
  127.0.0.1 cannot read the API. Bound to any other address, every request
  except the sign-in needs the token.
* Every action (start, stop, requeue, delete) needs the token, either as
  ``Authorization: Bearer TOKEN`` or as the session cookie set by signing in.
  A cookie-authenticated action also needs the CSRF token of the page in the
  ``X-CSRF-Token`` header, and any action whose ``Origin`` or
  ``Sec-Fetch-Site`` header shows another site is rejected.
* No secret leaves the server: URLs are masked with ``mask_url``, error texts
  with ``mask_text``, headers are never shown, and the cookie contains an HMAC of
  the token, not the token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
from flask import Flask, Response, jsonify, redirect, render_template, request
from jinja2 import Undefined

from bts_sync import chain, deadletters, metrics
from bts_sync.charts import chart, sparkline_points
from bts_sync.connection import describe
from bts_sync.errors import UnknownEndpointError
from bts_sync.overview import HistoryCache, build_overview, recent_failures
from bts_sync.redact import mask_url

logger = logging.getLogger(__name__)

#: Name of the cookie that contains the signed-in session.
SESSION_COOKIE = "bts_sync_session"

#: Shortest accepted dashboard token, in characters.
MIN_TOKEN_LENGTH = 16

#: Polls drawn in each endpoint's chart.
CHART_POLLS = 120

#: Failed polls listed on the page.
FAILURES_LISTED = 20

#: Host names that count as loopback in the ``Host`` header.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    """Tell whether ``host`` is a loopback name or address."""
    if host.strip("[]") in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _derive(token: str, purpose: str) -> str:
    return hmac.new(token.encode(), purpose.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Access:
    """Access rules of a dashboard.

    Attributes:
        token: The dashboard token.
        open_reads: Whether reads need no token (on a loopback address only).
    """

    token: str
    open_reads: bool

    @property
    def session(self) -> str:
        """Value of the session cookie: an HMAC of the token, so the token itself never travels in a cookie."""
        return _derive(self.token, "bts-sync dashboard session")

    @property
    def csrf(self) -> str:
        """CSRF token that the page sends with each action."""
        return _derive(self.token, "bts-sync dashboard csrf")

    def has_token(self, value: str) -> bool:
        """Compare a presented token in constant time."""
        return hmac.compare_digest(value.encode(), self.token.encode())

    def bearer(self) -> bool:
        """Tell whether the request carries the token as a bearer token."""
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.has_token(value.strip())

    def signed_in(self) -> bool:
        """Tell whether the request carries a valid session cookie."""
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self.session.encode())


class Monitor:
    """Reads and actions of the dashboard, over the imported ``bts_sync.actors`` module."""

    def __init__(self, actors: Any) -> None:
        self.actors = actors
        self.settings = actors.SETTINGS
        self.client: redis.Redis = actors.redis_client()
        self.cache = HistoryCache(
            self.settings.key_prefix, self.settings.history_length
        )
        self.namespace = actors.broker.namespace
        self.queue = actors.QUEUE_NAME

    def overview(self) -> dict[str, Any]:
        """Return the overview that ``watch`` shows too."""
        return build_overview(self.actors, self.client, self.cache)

    def history(self, name: str, count: int) -> list[dict[str, Any]]:
        """Return up to ``count`` latest polls of the endpoint, oldest first."""
        self.settings.endpoint(name)
        self.cache.refresh(self.client, self.names())
        return [p.to_dict() for p in self.cache.points(name)[-count:]]

    def failures(self, limit: int) -> list[dict[str, Any]]:
        """Return the latest failed polls of all endpoints, newest first."""
        self.cache.refresh(self.client, self.names())
        return recent_failures(self.cache, self.names(), limit)

    def names(self) -> list[str]:
        """Return the configured endpoint names."""
        return [e.name for e in self.settings.endpoints]

    def dead_letters(self) -> list[deadletters.DeadLetter]:
        """Return the dead-lettered messages, newest first."""
        return deadletters.list_dead_letters(self.client, self.namespace, self.queue)

    def start(self, name: str) -> str:
        """Start the endpoint's chain; return ``started`` or ``already running``."""
        outcome = self.actors.start_chain(self.client, self.settings.endpoint(name))
        return "started" if outcome.started else "already running"

    def stop(self, name: str) -> str:
        """Stop the endpoint's chain; return ``stopped`` or ``was not running``."""
        self.settings.endpoint(name)
        running = chain.stop(self.client, self.settings.key_prefix, name)
        return "stopped" if running else "was not running"

    def requeue(self, redis_id: str) -> bool:
        """Move a dead-lettered message back to the queue; return whether it was there."""
        return deadletters.requeue_dead_letter(
            self.client, self.namespace, self.queue, redis_id
        )

    def delete(self, redis_id: str) -> bool:
        """Delete a dead-lettered message; return whether it was there."""
        return deadletters.delete_dead_letter(
            self.client, self.namespace, self.queue, redis_id
        )

    def metrics_text(self) -> bytes:
        """Render the Prometheus metrics."""
        return metrics.render(metrics.read_snapshot(self.actors, self.client))


def _error(message: str, status: int) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response


def _same_origin() -> bool:
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.host


def create_app(monitor: Monitor, access: Access) -> Flask:
    """Create the Flask application of the dashboard."""
    app = Flask(
        __name__,
        template_folder="dashboard_templates",
        static_folder="dashboard_static",
        static_url_path="/static",
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    _register_filters(app)
    _register_guards(app, access)
    _register_pages(app, monitor, access)
    _register_actions(app, monitor, access)
    _register_api(app, monitor)
    return app


def _register_guards(app: Flask, access: Access) -> None:
    @app.before_request
    def check_access() -> Response | None:
        host = urlsplit(f"//{request.host}").hostname or ""
        if access.open_reads and not is_loopback(host):
            return _error(
                f"Host {request.host!r} is not a loopback name; open the dashboard at http://127.0.0.1 or http://localhost.",
                400,
            )
        if request.endpoint in ("login", "static") or access.open_reads:
            return None
        if access.bearer() or access.signed_in():
            return None
        if request.path.startswith(("/api/", "/metrics")):
            return _error(
                "This request needs the dashboard token: send Authorization: Bearer TOKEN.",
                401,
            )
        return Response(render_template("login.html", problem=""), status=401)

    @app.after_request
    def add_security_headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
            "form-action 'self'; base-uri 'none'"
        )
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if request.endpoint != "static":
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(redis.RedisError)
    def redis_failed(exc: redis.RedisError) -> Response:
        return _error(f"Redis failed: {describe(exc)}.", 503)

    @app.errorhandler(UnknownEndpointError)
    def unknown_endpoint(exc: UnknownEndpointError) -> Response:
        return _error(str(exc), 404)


def _register_pages(app: Flask, monitor: Monitor, access: Access) -> None:
    def page_context() -> dict[str, Any]:
        signed_in = access.bearer() or access.signed_in()
        overview = monitor.overview()
        return {
            "overview": overview,
            "failures": recent_failures(
                monitor.cache, monitor.names(), FAILURES_LISTED
            ),
            "dead_letters": [d.to_dict() for d in monitor.dead_letters()],
            "charts": {
                row["name"]: chart(monitor.cache.points(row["name"])[-CHART_POLLS:])
                for row in overview["endpoints"]
            },
            "signed_in": signed_in,
            "csrf": access.csrf if signed_in else "",
            "redis_url": mask_url(monitor.settings.redis_url),
        }

    @app.get("/")
    def index() -> str:
        return render_template("dashboard.html", **page_context())

    @app.get("/fragment")
    def fragment() -> str:
        return render_template("overview.html", **page_context())

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        presented = request.values.get("token", "")
        if not presented and request.method == "GET":
            return render_template("login.html", problem="")
        if not access.has_token(presented):
            problem = "That token is not the dashboard token."
            return Response(render_template("login.html", problem=problem), status=403)
        response = redirect("/", code=303)
        response.set_cookie(
            SESSION_COOKIE,
            access.session,
            httponly=True,
            samesite="Strict",
            secure=request.is_secure,
        )
        return response


def _register_actions(app: Flask, monitor: Monitor, access: Access) -> None:
    def action(handler: Callable[..., Any]) -> Callable[..., Response]:
        def guarded(**kwargs: Any) -> Response:
            if not _same_origin():
                return _error("Cross-site request rejected.", 403)
            if not access.bearer():
                if not access.signed_in():
                    return _error(
                        "This action needs the dashboard token: sign in, or send Authorization: Bearer TOKEN.",
                        401,
                    )
                presented = request.headers.get("X-CSRF-Token", "")
                if not hmac.compare_digest(presented.encode(), access.csrf.encode()):
                    return _error(
                        "Missing or invalid CSRF token; reload the page and try again.",
                        403,
                    )
            result = handler(**kwargs)
            logger.info("Dashboard action %s %s: %s.", request.path, kwargs, result)
            return jsonify(result)

        guarded.__name__ = handler.__name__
        return guarded

    @app.post("/logout")
    @action
    def logout() -> dict[str, Any]:
        return {"result": "signed out"}

    @app.post("/api/endpoints/<name>/start")
    @action
    def start_endpoint(name: str) -> dict[str, Any]:
        return {"endpoint": name, "result": monitor.start(name)}

    @app.post("/api/endpoints/<name>/stop")
    @action
    def stop_endpoint(name: str) -> dict[str, Any]:
        return {"endpoint": name, "result": monitor.stop(name)}

    @app.post("/api/dead-letters/<redis_id>/requeue")
    @action
    def requeue_dead_letter(redis_id: str) -> dict[str, Any]:
        found = monitor.requeue(redis_id)
        return {"id": redis_id, "result": "requeued" if found else "not found"}

    @app.post("/api/dead-letters/<redis_id>/delete")
    @action
    def delete_dead_letter(redis_id: str) -> dict[str, Any]:
        found = monitor.delete(redis_id)
        return {"id": redis_id, "result": "deleted" if found else "not found"}

    @app.post("/api/dead-letters/requeue-all")
    @action
    def requeue_all() -> dict[str, Any]:
        count = sum(monitor.requeue(d.id) for d in monitor.dead_letters())
        return {"result": f"requeued {count}"}

    @app.post("/api/dead-letters/delete-all")
    @action
    def delete_all() -> dict[str, Any]:
        count = sum(monitor.delete(d.id) for d in monitor.dead_letters())
        return {"result": f"deleted {count}"}


def _register_api(app: Flask, monitor: Monitor) -> None:
    @app.get("/api/status")
    def api_status() -> Response:
        return jsonify(monitor.overview())

    @app.get("/api/endpoints/<name>/history")
    def api_history(name: str) -> Response:
        count = request.args.get("count", default=CHART_POLLS, type=int) or CHART_POLLS
        return jsonify(monitor.history(name, max(1, count)))

    @app.get("/api/failures")
    def api_failures() -> Response:
        limit = request.args.get("limit", default=FAILURES_LISTED, type=int) or 1
        return jsonify(monitor.failures(max(1, limit)))

    @app.get("/api/dead-letters")
    def api_dead_letters() -> Response:
        return jsonify([d.to_dict() for d in monitor.dead_letters()])

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(monitor.metrics_text(), content_type=CONTENT_TYPE_LATEST)


def _register_filters(app: Flask) -> None:
    from bts_sync.render import format_age, format_duration

    app.jinja_env.globals["sparkline"] = sparkline_points

    @app.template_filter("age")
    def age(timestamp: float | None) -> str:
        return format_age(time.time() - timestamp if timestamp else None)

    @app.template_filter("duration")
    def duration(seconds: float) -> str:
        return format_duration(seconds)

    @app.template_filter("clock")
    def clock(timestamp: float) -> str:
        return time.strftime("%H:%M:%S", time.localtime(timestamp))

    @app.template_filter("ms")
    def milliseconds(value: Any) -> str:
        if isinstance(value, Undefined) or value in (None, ""):
            return "—"
        try:
            return f"{float(value):.0f} ms"
        except ValueError:
            return "—"


def bind(app: Flask, host: str, port: int, threads: int = 8) -> Any:
    """Bind a Waitress server for the app; call its ``run()`` to serve until interrupted.

    Waitress is a pure-Python, multi-threaded WSGI server for production use;
    the Redis client underneath is synchronous, so threads fit it. Binding
    first lets the caller report a port in use before it prints anything else.

    Raises:
        OSError: The address cannot be bound, for example because it is in use.
    """
    from waitress.server import create_server

    return create_server(app, host=host, port=port, threads=threads, ident="bts-sync")

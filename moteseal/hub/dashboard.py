"""The hub's web dashboard (aiohttp, on its own thread and event loop):
the fleet, one page per device with a live chart per field, the gateway's
health, and a form that queues a command. Live updates come over
server-sent events; the charts are uPlot (MIT), shipped in ``static/`` so
an offline hub needs no CDN.

Invariants:
- Rule 1: bound to a loopback address it serves anyone on this machine;
  bound anywhere else, every request must carry the token from
  ``[dashboard] token_file`` (``Authorization: Bearer``, or ``?token=`` once,
  which sets an HttpOnly cookie), compared in constant time; without it the
  answer is 401. The hub says so at start.
- Rule 2: the pages show ids, times, counts, session ages and the devices'
  own readings; never a key, a PSK, a password or the token.
- Rule 3: a slow or closed page never holds up the hub: events reach it
  through a bounded queue that drops when full (the page then reloads what
  it missed from the store).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import queue
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

from device.errors import LocalError
from moteseal.hub.sinks import read_secret
from moteseal.hub.store import StoreError, query

STATIC = Path(__file__).parent / "static"
COOKIE = "moteseal_token"
SSE_POLL_S = 0.5  # how soon an event stream notices the hub stopping
SSE_KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing the stream


class DashboardError(LocalError):
    """The dashboard cannot start as configured (no token beyond loopback,
    the port is taken); the hub does not start and the CLI exits 2."""

    exit_code = 2


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Dashboard:
    """Serves one ``Hub``. ``start()`` returns once listening; ``url`` is where.

    Thread-safe: its own thread; it reads the hub's thread-safe views."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        cfg = hub.cfg
        self.bind = cfg.get("dashboard", "bind")
        self.port = cfg.get("dashboard", "port")
        self.needs_token = not _loopback(self.bind)
        self.token = read_secret(cfg.path_of("dashboard", "token_file"))
        if self.needs_token and not self.token:
            raise DashboardError(f"{cfg.path}: [dashboard] bind = {self.bind!r} is not loopback, so it "
                           f"needs a token_file (moteseal hub init writes one)")
        self.gateway_status = cfg.path_of("dashboard", "gateway_status")
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> "Dashboard":
        threading.Thread(target=self._serve, name="hub-dashboard", daemon=True).start()
        self._ready.wait(15)
        if self._error is not None:
            raise DashboardError(f"dashboard on {self.bind}:{self.port}: {self._error}")
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._setup())
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()

    async def _setup(self) -> None:
        app = web.Application(middlewares=[self._auth])
        app.add_routes([
            web.get("/", self._page("fleet.html")),
            web.get("/device/{device}", self._page("device.html")),
            web.get("/api/fleet", self._fleet),
            web.get("/api/device/{device}", self._device),
            web.get("/api/events", self._events),
            web.post("/api/device/{device}/command", self._command),
            web.get("/events", self._sse),
            web.get("/metrics", self._metrics),
            web.static("/static", STATIC),
        ])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.bind, self.port)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        host, port = sock.getsockname()[:2]
        self.port = port
        self.url = f"http://{host if ':' not in host else '[' + host + ']'}:{port}/"

    def stop(self) -> None:
        loop = self._loop
        if loop is None or not loop.is_running():
            return
        fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop)  # type: ignore[union-attr]
        try:
            fut.result(5)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        loop.call_soon_threadsafe(loop.stop)

    # -- Rule 1 -------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not self.needs_token:
            return await handler(request)
        given = request.query.get("token") or request.cookies.get(COOKIE) or ""
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[7:]
        assert self.token is not None
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return web.Response(status=401, text="moteseal dashboard: a token is required "
                                                 "(?token=... from the hub's token_file)\n")
        resp = await handler(request)
        if "token" in request.query:
            resp.set_cookie(COOKIE, given, httponly=True, samesite="Strict")
        return resp

    # -- pages and API ----------------------------------------------------------------

    def _page(self, name: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=(STATIC / name).read_text(), content_type="text/html")
        return handler

    async def _fleet(self, request: web.Request) -> web.Response:
        hub = self.hub
        sessions = hub.sessions_info()
        refusals: dict[str, int] = {}
        keys: dict[str, str] = {}
        try:
            for row in hub.registry.refusals():
                refusals[row["device_id"]] = refusals.get(row["device_id"], 0) + row["count"]
            for rec in hub.registry.list_devices():
                d = rec.to_json()
                keys[d["device_id"]] = "revoked" if d["revoked"] else (d["last_key_state"] or "provisioned")
        except Exception:  # noqa: BLE001 - a busy registry: show what we have
            pass
        devices = {d["device"]: d for d in hub.store.devices()}
        for name in set(keys) | set(sessions):
            devices.setdefault(name, {"device": name, "last_seen": None, "last_hour": 0, "lost": 0})
        rows = []
        for name in sorted(devices):
            d = dict(devices[name])
            d["session_age"] = sessions.get(name, {}).get("age")
            d["key"] = keys.get(name, "-")
            d["refusals"] = refusals.get(name, 0)
            rows.append(d)
        gateway = None
        if self.gateway_status is not None:
            try:
                gateway = json.loads(self.gateway_status.read_text())
            except (OSError, ValueError):
                gateway = {"error": f"cannot read {self.gateway_status}"}
        return web.json_response({"peer": hub.peer_id, "devices": rows, "gateway": gateway,
                                  "counts": dict(hub.listener.counts)})

    async def _device(self, request: web.Request) -> web.Response:
        device = request.match_info["device"]
        after = int(request.query.get("after", "0") or 0)
        since = None if after else self.hub.wall_clock() - float(request.query.get("window", "3600"))
        rows = list(query(str(self.hub.store.path), device, None, since, after))[-5000:]
        events = [e for e in list(self.hub.events) if e.get("device") == device][-50:]
        return web.json_response({"device": device, "rows": [
            {"id": r[0], "seq": r[2], "ts": r[3], "field": r[4], "value": r[5]} for r in rows],
            "events": events, "session": self.hub.sessions_info().get(device)})

    async def _events(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.hub.events)[-100:])

    async def _command(self, request: web.Request) -> web.Response:
        device = request.match_info["device"]
        try:
            body = await request.json()
            text = str(body.get("command", ""))
            cid = self.hub.send_command(device, text.encode())
        except (ValueError, AttributeError):
            return web.json_response({"error": "send {\"command\": \"...\"}"}, status=400)
        except StoreError as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response(self.hub.store.command(cid))

    async def _metrics(self, request: web.Request) -> web.Response:
        from moteseal.hub.metrics import render
        return web.Response(body=render(self.hub), content_type="text/plain")

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        q = self.hub.subscribe()
        loop = asyncio.get_running_loop()
        stopping = self.hub.stop_event
        idle = 0.0
        try:
            await resp.write(b": moteseal\n\n")
            # Short waits so that a stopping hub is never held up by an open
            # page: the executor's threads are joined when the process exits.
            while not stopping.is_set():
                try:
                    ev = await loop.run_in_executor(None, q.get, True, SSE_POLL_S)
                except queue.Empty:
                    idle += SSE_POLL_S
                    if idle >= SSE_KEEPALIVE_S:
                        idle = 0.0
                        await resp.write(b": keepalive\n\n")
                    continue
                idle = 0.0
                shown = {k: ev.get(k) for k in ("event", "device", "via", "seq", "ts", "reason", "id")
                         if k in ev}
                await resp.write(f"data: {json.dumps(shown)}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.hub.unsubscribe(q)
        return resp

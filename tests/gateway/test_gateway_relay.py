"""The relay core with in-memory links: routing, drops by reason, rate limits,
and good traffic flowing past every kind of bad traffic."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest

from gateway.relay import (LINK_ERROR, RATE_LIMITED, SRC_MISMATCH, UNKNOWN_DESTINATION,
                           UNKNOWN_SOURCE, RateLimiter, Relay, RouteTable)

GATEWAY_DIR = Path(__file__).resolve().parents[2] / "gateway"


class MemoryLink:
    """Records what the relay sends and acknowledges it at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.fail = False

    def send(self, dst, envelope, done):
        if self.fail:
            raise OSError("link down")
        self.sent.append((dst, envelope))
        if done is not None:
            done()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def data(src: str, dst: str, nonce: int = 1, ct: bytes = b"\xaa" * 24) -> bytes:
    return cbor2.dumps([6, src.encode(), dst.encode(), 9, nonce, ct])


@pytest.fixture
def world():
    clock = Clock()
    mqtt, serial = MemoryLink(), MemoryLink()
    drops: list[tuple[str, str, str, int]] = []
    relay = Relay(RouteTable({"mqtt": ["hub", "sensor-*"], "serial0": ["mote-1"]}),
                  RateLimiter(rate=5, burst=5), {"mqtt": mqtt, "serial0": serial},
                  on_drop=lambda *a: drops.append(a), clock=clock, wall_clock=lambda: 42.0)
    return relay, mqtt, serial, clock, drops


def test_forwards_the_original_bytes_unchanged(world):
    relay, mqtt, serial, _, _ = world
    # A canonical envelope whose ct happens to look like CBOR is still opaque.
    env = data("sensor-1", "hub", ct=cbor2.dumps({"t": 21.5}))
    acked = []
    assert relay.handle(env, "sensor-1", "mqtt", lambda: acked.append(1)) is None
    assert mqtt.sent == [("hub", env)] and mqtt.sent[0][1] is env
    assert acked == [1]
    assert relay.stats.relayed == {"mqtt": 1}
    assert relay.stats.last_seen == {"sensor-1": 42.0}


def test_routes_between_links(world):
    relay, mqtt, serial, _, _ = world
    assert relay.handle(data("hub", "mote-1"), "hub", "mqtt") is None
    assert relay.handle(data("mote-1", "hub"), "mote-1", "serial0") is None
    assert serial.sent[0][0] == "mote-1" and mqtt.sent[0][0] == "hub"


@pytest.mark.parametrize("env,arrived,link,reason", [
    (b"\xff\x00junk", "sensor-1", "mqtt", "malformed"),
    (data("sensor-1", "hub", ct=b"\0" * 1300), "sensor-1", "mqtt", "oversize"),
    (cbor2.dumps([10, b"sensor-1", b"hub", 1, b""]), "sensor-1", "mqtt", "unknown_version"),
    (data("sensor-2", "hub"), "sensor-1", "mqtt", SRC_MISMATCH),
    (data("sensor-1", "nobody"), "sensor-1", "mqtt", UNKNOWN_DESTINATION),
    (data("stranger", "hub"), "stranger", "mqtt", UNKNOWN_SOURCE),
    (data("mote-1", "hub"), "mote-1", "mqtt", UNKNOWN_SOURCE),  # serial id claimed over MQTT
], ids=["malformed", "oversize", "unknown_version", "src_mismatch",
        "unknown_destination", "unknown_source", "wrong_link"])
def test_bad_envelopes_are_dropped_counted_and_acknowledged(world, env, arrived, link, reason):
    relay, mqtt, serial, _, drops = world
    acked = []
    assert relay.handle(env, arrived, link, lambda: acked.append(1)) == reason
    assert acked == [1], "a dropped message is acknowledged so that it is not redelivered"
    assert relay.stats.dropped[reason] == 1
    assert sum(relay.stats.dropped.values()) == 1
    assert mqtt.sent == [] and serial.sent == []
    dst = "nobody" if reason == UNKNOWN_DESTINATION else None  # named where it was read
    assert drops == [(reason, arrived, link, len(env), dst)]


def test_rate_limit_is_per_device_and_refills(world):
    relay, mqtt, _, clock, _ = world
    results = [relay.handle(data("sensor-1", "hub", n), "sensor-1", "mqtt") for n in range(8)]
    assert results == [None] * 5 + [RATE_LIMITED] * 3
    # Another device is not affected by sensor-1's flood.
    assert relay.handle(data("sensor-2", "hub"), "sensor-2", "mqtt") is None
    clock.t += 0.2  # 5/s refills one token in 0.2 s
    assert relay.handle(data("sensor-1", "hub", 9), "sensor-1", "mqtt") is None
    assert relay.handle(data("sensor-1", "hub", 10), "sensor-1", "mqtt") == RATE_LIMITED
    assert relay.stats.dropped[RATE_LIMITED] == 4
    assert len(mqtt.sent) == 7


def test_good_traffic_continues_among_bad(world):
    relay, mqtt, _, clock, _ = world
    relay.limiter = RateLimiter(rate=1000, burst=1000)
    bad = [b"", b"\x86", data("sensor-9", "nobody"), data("hub", "sensor-1"),
           data("sensor-3", "hub", ct=b"\0" * 5000)]
    good = []
    for i in range(200):
        env = data("sensor-1", "hub", i)
        good.append(env)
        assert relay.handle(env, "sensor-1", "mqtt") is None
        assert relay.handle(bad[i % len(bad)], "sensor-9", "mqtt") is not None
    assert [e for _, e in mqtt.sent] == good
    assert sum(relay.stats.dropped.values()) == 200


def test_link_failure_is_a_counted_drop(world):
    relay, _, serial, _, _ = world
    serial.fail = True
    acked = []
    assert relay.handle(data("hub", "mote-1"), "hub", "mqtt", lambda: acked.append(1)) == LINK_ERROR
    assert acked == [1]


def test_route_table_exact_ids_win_over_patterns():
    routes = RouteTable({"mqtt": ["*"], "serial0": ["mote-?", "mote-10"]})
    assert routes.link_for("mote-1") == "mqtt"  # patterns in order: "*" first
    assert routes.link_for("mote-10") == "serial0"
    routes = RouteTable({"serial0": ["mote-?"], "mqtt": ["*"]})
    assert routes.link_for("mote-1") == "serial0"
    assert routes.link_for("anything") == "mqtt"
    assert RouteTable({"mqtt": ["hub"]}).link_for("hub2") is None


def test_rate_limiter_memory_is_bounded():
    limiter = RateLimiter(rate=10, burst=2, max_senders=100)
    for i in range(1000):
        assert limiter.allow(f"d{i}", now=float(i))
    assert len(limiter._buckets) <= 100


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, by full dotted name (``from pkg import
    mod`` counts as ``pkg.mod``, so ``from device import X`` is ``device.X``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = ("gateway." if node.level else "") + (node.module or "")
            if "." in module:
                names.add(module)
            else:
                names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant):
                names.add(str(node.args[0].value))
    return names


# The serial bridge may use the byte framing shared with devices; nothing
# else from device/ (no keys, Noise, transport, session or backend code).
ALLOWED_DEVICE_MODULES = {"device.framing", "moteseal.links.serial_link", "device.errors"}
FORBIDDEN_ROOTS = {"noise", "nacl", "cryptography", "micropython_port"}


def test_gateway_imports_no_key_noise_or_session_code():
    files = sorted(GATEWAY_DIR.glob("*.py"))
    assert len(files) >= 4
    for path in files:
        for name in _imported_modules(path):
            root = name.split(".")[0]
            assert root not in FORBIDDEN_ROOTS, f"{path.name} imports {name}"
            if root == "device":
                module = ".".join(name.split(".")[:2])
                assert module in ALLOWED_DEVICE_MODULES, f"{path.name} imports {name}"


def test_the_relay_path_loads_no_device_module():
    mods = ["gateway.envelope", "gateway.relay"] + [
        f"gateway.{name}" for name in ("mqtt", "mqtt_wire", "config", "metrics", "logs",
                                       "runner", "broker", "cli")
        if (GATEWAY_DIR / f"{name}.py").exists()]
    code = ("import sys, importlib\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('device', 'noise', 'nacl', 'cryptography', 'micropython_port')]\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_python_m_gateway_runs_without_loading_device_code(tmp_path):
    code = ("import runpy, sys\n"
            "sys.argv = ['gateway', 'status', '--status-file', sys.argv[1]]\n"
            "try:\n"
            "    runpy.run_module('gateway', run_name='__main__')\n"
            "except SystemExit:\n"
            "    pass\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('device', 'noise', 'nacl')]\n"
            "print('LOADED', bad)\n")
    status = tmp_path / "status.json"
    status.write_text('{"relayed": 1, "relayed_by_link": {"mqtt": 1}, "dropped": {}, '
                      '"last_seen": {}, "links": {}, "stopped": true}')
    result = subprocess.run([sys.executable, "-c", code, str(status)], capture_output=True,
                            text=True, timeout=60)
    assert "relayed     1" in result.stdout, result.stdout + result.stderr
    assert "LOADED []" in result.stdout


def test_links_on_several_threads_count_exactly():
    import threading

    sink = MemoryLink()
    relay = Relay(RouteTable({"mqtt": ["hub", "m-*"], "serial0": ["s-*"]}),
                  RateLimiter(rate=0, burst=1), {"mqtt": sink, "serial0": MemoryLink()})

    def worker(name: str, link: str) -> None:
        for i in range(2000):
            relay.handle(data(name, "hub", i), name, link)
            relay.handle(b"junk", name, link)

    threads = [threading.Thread(target=worker, args=(f"{p}-{i}", "mqtt" if p == "m" else "serial0"))
               for i in range(3) for p in ("m", "s")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = relay.snapshot()
    assert snap["relayed"] == 6 * 2000 == len(sink.sent)
    assert snap["dropped"]["malformed"] == 6 * 2000
    assert set(snap["last_seen"]) == {f"{p}-{i}" for i in range(3) for p in ("m", "s")}

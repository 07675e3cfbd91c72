"""DeviceSession limits that must hold without help from the caller:
the hint rate limit with no clock (Rule 4)."""

from device import envelope as E
from device.session import EV_NONE, EV_REHANDSHAKE
from tests.pair import Pair


def _forged_hint(p, reason=E.HINT_UNKNOWN_SESSION):
    # Hints are unauthenticated: anyone on the path can make this one.
    return E.encode(E.HEAD_HINT, b"hub", b"sensor-1", p.device.sid, reason)


def test_forged_hints_without_a_clock_cannot_force_a_storm_of_handshakes():
    p = Pair(hint_interval=5)
    p.handshake()
    events = [p.device.receive(_forged_hint(p), now=None)[0] for _ in range(50)]
    assert events[0] == EV_REHANDSHAKE
    assert events[1:] == [EV_NONE] * 49


def test_without_a_clock_a_hint_is_acted_on_again_after_hint_interval_sends():
    p = Pair(hint_interval=3)
    p.handshake()
    assert p.device.receive(_forged_hint(p))[0] == EV_REHANDSHAKE
    for _ in range(2):
        p.device.send(b"x")
        assert p.device.receive(_forged_hint(p))[0] == EV_NONE
    p.device.send(b"x")  # the third send since: a real lost session recovers
    assert p.device.receive(_forged_hint(p))[0] == EV_REHANDSHAKE
    assert p.device.receive(_forged_hint(p))[0] == EV_NONE

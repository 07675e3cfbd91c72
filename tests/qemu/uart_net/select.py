# Stand-in: readiness of the tunnelled socket, asked of the host (README.md).
from socket import _ask

POLLIN = 1
POLLOUT = 4
POLLERR = 8
POLLHUP = 16


class poll:
    """Not thread-safe (a device has one thread)."""

    def __init__(self):
        self.s = None

    def register(self, s, mask=POLLIN):
        self.s = s

    def unregister(self, s):
        self.s = None

    def ipoll(self, timeout_ms=-1):
        if self.s is not None and _ask("~P %d" % timeout_ms) == "1":
            return ((self.s, POLLIN),)
        return ()

    poll = ipoll

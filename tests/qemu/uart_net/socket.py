# Stand-in: one TCP connection tunnelled over the console UART (README.md).
import io
import sys
from binascii import hexlify, unhexlify

AF_INET = 2
SOCK_STREAM = 1
IPPROTO_TCP = 6
TCP_NODELAY = 1


def getaddrinfo(host, port, af=0, type=0):
    return [(AF_INET, SOCK_STREAM, 0, "", (host, port))]


def _ask(line):
    print(line)
    got = sys.stdin.readline().rstrip("\r\n")
    if got == "!":  # the host pressed reset: the program stops here, as at a power cut
        raise KeyboardInterrupt
    return got


_STREAM_CLOSE = 4  # py/stream.h MP_STREAM_CLOSE


class socket(io.IOBase):
    """Not thread-safe (a device has one thread). An io.IOBase: the stream
    protocol of a board's socket, so the firmware's ``tls`` can wrap it
    (its reads and writes come to ``readinto``/``write``, None meaning
    EAGAIN, and its close to ``ioctl``)."""

    def __init__(self, af=AF_INET, type=SOCK_STREAM):
        self.open = False

    def setsockopt(self, *args):
        pass

    def settimeout(self, t):
        pass

    def setblocking(self, flag):
        pass

    def connect(self, addr):
        if _ask("~C %s %d" % (addr[0], addr[1])) != "1":
            raise OSError(111)
        self.open = True

    def write(self, buf, off=0, n=None):
        if n is None:
            n = len(buf) - off
        print("~W " + hexlify(memoryview(buf)[off:off + n]).decode())
        return n

    def readinto(self, buf):
        got = _ask("~R %d" % len(buf))
        if got == "-":
            return None
        data = unhexlify(got)
        buf[:len(data)] = data
        return len(data)

    def ioctl(self, req, arg):
        if req == _STREAM_CLOSE:
            self.close()
        return 0

    def close(self):
        if self.open:
            print("~X")
        self.open = False

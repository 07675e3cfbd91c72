"""A file-backed message-1 counter store (runs on CPython and MicroPython).

``store`` writes a new file and renames it over the old one, so a power cut
leaves either the old or the new ceiling, never a torn one; both are safe
(device/counter.py Rule 2 skips forward from whichever survives).
"""

try:
    import os
except ImportError:  # pragma: no cover
    import uos as os


class FileCounterStore:
    def __init__(self, path):
        self.path = path

    def load(self):
        try:
            with open(self.path, "r") as f:
                text = f.read().strip()
        except OSError:
            return 0
        try:
            return int(text)
        except ValueError:
            # A damaged file must not restart the counter at 0 (replays would
            # be refused by the peer forever); refuse to guess.
            raise OSError("damaged counter file " + self.path)

    def store(self, value):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(value))
            if hasattr(f, "flush"):
                f.flush()
            if hasattr(os, "fsync"):
                os.fsync(f.fileno())
        os.rename(tmp, self.path)

"""The device application's groups (``micropython_port/app.py`` Rule 7):
the glue between a ``Device`` and ``device.group.Groups``, loaded only by a
device made with ``groups=N``, so a device that joins no group spends no
heap on it.

Invariants:
- Rule 1: a key message from the hub (a data plaintext of the device's
  session) is taken before anything else sees it; a malformed or stale
  one is counted in ``group_refused`` and goes nowhere else.
- Rule 2: the device subscribes to ``moteseal/v1/group/<gid>`` of every
  group it holds keys for, from ``run``'s loop (``subscribe``), never
  inside the link's receive callback, where the MQTT client may not wait
  for a SUBACK. A UART link has no group topics.
- Rule 3: a group message reaches ``on_group(gid, buf, n)`` only once
  ``Groups.receive_into`` verified it (our hub, our epoch, fresh in the
  group's window, our MAC, the tag); anything else is counted in
  ``group_refused`` and logged by its error class. The payload lands in
  the device's plaintext buffer, free while the link delivers; the path
  allocates nothing (tests/micropython/test_mp_app_groups.py runs it, the
  hook included, under ``heap_lock``).
"""

from device.errors import RemoteError


class AppGroups:
    """A device's group memberships (Rules 1-3); ``limit`` is the largest
    group message it reads (the link's buffer must hold it).

    Threads: one at a time (the device's loop)."""

    def __init__(self, dev, backend, hub_id, max_payload, max_members):
        from device.group import Groups
        self.dev = dev
        self.groups = Groups(backend, hub_id, max_payload=max_payload, max_members=max_members)
        self.limit = self.groups.limit
        self.pending = False  # keys arrived: subscribe from run()'s loop

    def take(self, buf, n):
        """True if ``buf[:n]`` was a key or leave message (consumed)."""
        try:
            if not self.groups.take(buf, n):
                return False
            self.pending = True
        except Exception:  # RemoteError, or LocalError: no free slot (Rule 1)
            self.dev.counts["group_refused"] += 1
        return True

    def receive(self, buf, n):
        dev = self.dev
        c = dev.counts
        g = self.groups
        try:
            k = g.receive_into(buf, n, dev._buf)
            c["group"] += 1
            if dev.on_group:
                dev.on_group(g.last_group.gid, dev._buf, k)
        except RemoteError as e:  # Rule 3
            c["group_refused"] += 1
            if dev.log:
                dev.log("group_refused", e.__class__.__name__)
        except Exception as e:  # the user's bug must not stop the device
            c["command_errors"] += 1
            if dev.log:
                dev.log("command_failed", e.__class__.__name__)

    def subscribe(self):
        """Rule 2. Raises ``OSError`` if the broker refuses or does not answer."""
        self.pending = False
        dev = self.dev
        sub = getattr(dev.link, "client", None)
        for m in self.groups.members if sub else ():
            if m.epoch >= 0:
                sub.subscribe(b"moteseal/v1/group/" + m.gid, 1)
                if dev.log:
                    dev.log("group_subscribed", m.epoch)

"""The update state on the device's flash, shared by the transfer store
(``micropython_port/update.py``) and the boot step
(``micropython_port/app_update.py``), so that neither loads the other.

``.xstate`` is JSON: ``{"v": {name: version}, "t": tid, "s": state}``
(installed versions, the last finished transfer) plus ``"stage"`` (a
staged application's version), ``"trial"`` (``[version, paths]`` while a
new application is tried) and ``"bad"`` (the version rolled back). It is
replaced atomically: written beside, renamed.
"""

import json
import os

_STATE = ".xstate"
_STAGE = ".stage"
APP_NAME = b"app"  # the manifest name of an application archive


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def _remove(p):
    try:
        os.remove(p)
    except OSError:
        pass


def read_state():
    """The parsed ``.xstate`` (an empty one if absent or damaged)."""
    try:
        with open(_STATE) as f:
            st = json.load(f)
        if isinstance(st, dict):
            return st
    except (OSError, ValueError):
        pass
    return {"v": {}, "t": -1, "s": 5}  # device.transfer's ST_IDLE


def write_state(st):
    """Replaces ``.xstate`` atomically (written beside, renamed). Raises
    ``OSError``."""
    with open(_STATE + ".tmp", "w") as f:
        json.dump(st, f)
    os.rename(_STATE + ".tmp", _STATE)



"""The boot step of application updates (``micropython_port/app_update.py``)
on the MicroPython unix port with real files: a staged archive is applied
(old files kept as ``.old``), an unconfirmed trial is rolled back at the
next boot, a confirmed one keeps the new files, and an archive with a path
that leaves the directory is not applied at all.
"""

from __future__ import annotations

import json

import pytest

from tests.mp_helpers import run_mp_json

pytestmark = [pytest.mark.micropython, pytest.mark.timeout(60)]

SCRIPT = """
import json, os
import micropython_port.app_update as A
from micropython_port.update_state import read_state, write_state

def member(path, data):
    p = path.encode()
    return bytes([len(p)]) + p + len(data).to_bytes(4, "big") + data

def stage(version, members):
    with open(".stage", "wb") as f:
        for m in members:
            f.write(m)
    st = read_state()
    st["stage"] = version
    write_state(st)

def read(p):
    try:
        with open(p, "rb") as f:
            return f.read().decode()
    except OSError:
        return None

os.mkdir("lib")
for p, d in (("main.py", "old main"), ("lib/app.mpy", "old app")):
    with open(p, "wb") as f:
        f.write(d.encode())
out = {}
stage(10, [member("main.py", b"new main"), member("lib/app.mpy", b"new app"), member("lib/extra.mpy", b"x")])
out["boot1"] = A.boot()
out["trial"] = [read("main.py"), read("lib/app.mpy"), read("lib/extra.mpy"), read("lib/app.mpy.old")]
out["boot2"] = A.boot()  # not confirmed: roll back
out["back"] = [read("main.py"), read("lib/app.mpy"), read("lib/extra.mpy"), read("lib/app.mpy.old")]
out["st2"] = read_state()
stage(11, [member("lib/app.mpy", b"newer app")])
out["boot3"] = A.boot()
A.confirm()
out["kept"] = [read("lib/app.mpy"), read("lib/app.mpy.old"), read_state()["v"]]
out["boot4"] = A.boot()  # nothing to do
stage(12, [member("lib/app.mpy", b"evil"), member("../escape", b"evil")])
out["boot5"] = A.boot()
out["after_bad"] = [read("lib/app.mpy"), read("../escape"), read(".stage"), read_state().get("bad"),
                    read("lib/app.mpy.new")]
print(json.dumps(out))
"""


def test_apply_rollback_confirm_and_a_bad_path_at_boot(tmp_path) -> None:
    work = tmp_path / "flash"
    work.mkdir()
    r = run_mp_json(SCRIPT, cwd=work)
    assert r["boot1"] == "trial"
    assert r["trial"] == ["new main", "new app", "x", "old app"]
    assert r["boot2"] == "rolled_back"
    assert r["back"] == ["old main", "old app", None, None]
    assert r["st2"]["bad"] == 10 and "trial" not in r["st2"]
    assert r["boot3"] == "trial"
    assert r["kept"] == ["newer app", None, {"app": 11}]
    assert r["boot4"] is None
    assert r["boot5"] == "rolled_back"
    assert r["after_bad"] == ["newer app", None, None, 12, None]
    assert not (tmp_path / "escape").exists()
    assert json.loads((work / ".xstate").read_text())["v"] == {"app": 11}

"""Short fuzz runs of every target in ``targets.TARGETS`` (issue 8).

Two engines drive the same targets:
- hypothesis, always: random and shrinking inputs, ``MOTESEAL_FUZZ_EXAMPLES``
  per target (default 300);
- atheris (coverage-guided libFuzzer), where it is installed: a few seconds
  per target in a child process (``MOTESEAL_FUZZ_SECONDS``, default 2 here).

Longer local runs: ``MOTESEAL_FUZZ_SECONDS=600 python -m tests.fuzz.run all``
(see ``tests/fuzz/run.py``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from .targets import SEEDS, TARGETS

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("MOTESEAL_FUZZ_EXAMPLES", "300"))
ATHERIS_SECONDS = int(os.environ.get("MOTESEAL_FUZZ_SECONDS", "2"))


@pytest.mark.parametrize("name", list(TARGETS))
def test_every_genuine_seed_passes_its_target(name):
    # Mode 1 hands the target the genuine message itself: it must be
    # accepted where it is genuine, and the oracle must agree.
    for i in range(min(32, len(SEEDS[name].seeds))):
        TARGETS[name](bytes([(i << 3) | 1]))


@pytest.mark.parametrize("name", list(TARGETS))
def test_target_under_hypothesis(name):
    target = TARGETS[name]

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=300))
    def run(data):
        target(data)

    run()


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
@pytest.mark.parametrize("name", list(TARGETS))
def test_target_under_atheris(name, tmp_path):
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, MOTESEAL_FUZZ_SECONDS=str(ATHERIS_SECONDS),
               MOTESEAL_FUZZ_ARTIFACTS=str(tmp_path), TMPDIR=str(tmp_path / "tmp"))
    r = subprocess.run([sys.executable, "-m", "tests.fuzz.run", name], cwd=REPO, env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60 + 2 * ATHERIS_SECONDS)
    out = r.stderr.decode(errors="replace")
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-")))
    assert r.returncode == 0 and not crashes, f"{crashes}\n{out[-4000:]}"
    assert " runs in " in out  # libFuzzer's closing line: it really ran
    assert list((tmp_path / "tmp").iterdir()) == []  # the seed corpus is cleaned up

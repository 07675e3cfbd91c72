"""Run one fuzz target under atheris (coverage-guided libFuzzer).

    python -m tests.fuzz.run TARGET [libFuzzer options...]
    python -m tests.fuzz.run --list

``TARGET`` is a name from ``tests.fuzz.targets.TARGETS`` (``all`` runs each
in turn, in child processes). It fuzzes for ``MOTESEAL_FUZZ_SECONDS``
seconds (default 60) from a seed corpus of the genuine messages; crashes
are written as ``crash-<hash>`` under ``MOTESEAL_FUZZ_ARTIFACTS`` (default
the current directory) and replay with
``python -m tests.fuzz.run TARGET crash-<hash>``. The normal test run calls
this with a few seconds per target (``tests/fuzz/test_fuzz_targets.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile


def _seed_corpus(mutator, directory: str) -> None:
    # Byte 0 = seed index << 3 | mode (see targets.Mutator): every seed
    # verbatim (mode 1) and with a first mutation of each kind.
    for i in range(min(32, len(mutator.seeds))):
        for mode in range(8):
            with open(os.path.join(directory, f"seed-{i}-{mode}"), "wb") as f:
                f.write(bytes([(i << 3) | mode]) + b"\x05\x41\x10\x00")


def main(argv: list[str]) -> int:
    import atheris  # only this runner needs it

    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 2
    if argv[1] == "--list":
        from tests.fuzz.targets import TARGETS
        print("\n".join(TARGETS))
        return 0
    if argv[1] == "all":
        from tests.fuzz.targets import TARGETS
        rc = 0
        for name in TARGETS:
            rc |= subprocess.call([sys.executable, "-m", "tests.fuzz.run", name] + argv[2:])
        return rc
    name = argv[1]
    extra = argv[2:]
    replay = [a for a in extra if not a.startswith("-")]
    corpus = os.environ.get("MOTESEAL_FUZZ_CORPUS")
    if not replay and corpus is None:
        # libFuzzer ends the process with exit(), past any finally or atexit:
        # the seed corpus lives in a temporary directory this parent removes.
        with tempfile.TemporaryDirectory(prefix=f"moteseal-fuzz-{name}-") as corpus:
            return subprocess.call([sys.executable, "-m", "tests.fuzz.run", *argv[1:]],
                                   env=dict(os.environ, MOTESEAL_FUZZ_CORPUS=corpus))
    with atheris.instrument_imports(include=["device", "gateway", "micropython_port"]):
        from tests.fuzz.targets import SEEDS, TARGETS
    target = TARGETS[name]
    seconds = int(os.environ.get("MOTESEAL_FUZZ_SECONDS", "60"))
    artifacts = os.environ.get("MOTESEAL_FUZZ_ARTIFACTS", ".")
    args = [argv[0], f"-artifact_prefix={os.path.join(artifacts, '')}", "-max_len=2048",
            "-rss_limit_mb=4096"]
    if not replay:
        assert corpus is not None  # set by the parent above
        _seed_corpus(SEEDS[name], corpus)
        args += [f"-max_total_time={seconds}", "-timeout=20"]
        extra = extra + [corpus]
    atheris.Setup(args + extra, target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

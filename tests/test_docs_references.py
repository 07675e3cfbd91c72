"""Every test a document names exists: a claim in docs/security.md (or any
other doc) that cites ``file.py::test_name`` must cite a real test, or the
claim has no proof.

A reference is ``path/to/file.py::name`` (path relative to ``tests/``, with
or without the ``tests/`` prefix), or ``::name`` continuing the last file
named in the same table cell or paragraph. ``name`` may be ``Class.method``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([*(REPO / "docs").glob("*.md"), REPO / "README.md"])
REF = re.compile(r"`((?:tests/)?[\w/]+\.py)?::([\w.]+)`")


def _references(text: str) -> list[tuple[str, str]]:
    refs = []
    for block in re.split(r"\n\s*\n|\n\|", text):  # paragraphs and table rows
        current = None
        for m in REF.finditer(block):
            path, name = m.group(1), m.group(2)
            if path:
                current = path.removeprefix("tests/")
            if current is None:
                refs.append(("?", name))
            else:
                refs.append((current, name))
    return refs


def _defined(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            names.update(f"{node.name}.{n.name}" for n in node.body
                         if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return names


ALL = [(doc.relative_to(REPO).as_posix(), path, name)
       for doc in DOCS for path, name in _references(doc.read_text())]


def test_the_docs_cite_tests() -> None:
    assert sum(1 for d, _, _ in ALL if d == "docs/security.md") >= 30


@pytest.mark.parametrize("doc,path,name", ALL, ids=[f"{d}:{p}::{n}" for d, p, n in ALL])
def test_every_cited_test_exists(doc: str, path: str, name: str) -> None:
    assert path != "?", f"{doc}: ::{name} follows no file name"
    target = REPO / "tests" / path
    assert target.is_file(), f"{doc} cites tests/{path}, which does not exist"
    assert name in _defined(target), f"{doc} cites tests/{path}::{name}, which is not defined there"

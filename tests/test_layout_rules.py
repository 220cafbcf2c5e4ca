"""Rules the import linter cannot see: one reader per on-disk format.

- The demo world's layout (``world.json``, its caption ground truth, ``pool.parquet``, the
  ``heldout`` split) is named only by ``curate/world.py`` (the reader) and
  ``builders/synthetic/world.py`` (the writer); every other module asks ``curate.world``.
- ``aux_label.jsonl`` (and TRIDENT's ``aux_label/`` folder) is named, so read and written, only
  by ``curate/aux_labels.py``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("curate", "builders", "annotations", "training")

WORLD_NAMES = re.compile(r"(?:^|/)(world\.json|captions_ground_truth\.json|pool\.parquet|heldout)(?:/|$)")
WORLD_OWNERS = {"curate/world.py", "builders/synthetic/world.py"}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants (module, class, function): prose may name anything."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def string_literals(source: str) -> list[tuple[int, str]]:
    """``(line, text)`` of every string literal of a module that could be a path (no whitespace:
    docstrings, help texts and messages are prose and may name anything); f-string parts included."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
            and not re.search(r"\s", node.value)]


def world_layout_uses(source: str) -> list[tuple[int, str]]:
    """Literals that name a file or folder of the demo world's layout (``world.json``, ``heldout/`` ...)."""
    return [(n, s) for n, s in string_literals(source) if WORLD_NAMES.search(s)]


def product_modules() -> list[tuple[str, str]]:
    out = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            out.append((path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")))
    return out


def test_only_the_world_module_knows_the_world_layout():
    offenders = [f"{rel}:{n}: {s!r}" for rel, src in product_modules() if rel not in WORLD_OWNERS
                 for n, s in world_layout_uses(src)]
    assert not offenders, ("these modules name the demo world's files; use curate.world instead:\n"
                           + "\n".join(offenders))


def test_the_world_rule_catches_what_it_should():
    # the forms the layout used to be hard-coded in (pairs.py, trident/demo.py, cli.py)
    bad = ('p = folder / "world.json"\n'
           'for split in ("train", "heldout", "rare"): pass\n'
           't = world / "captions_ground_truth.json"\n'
           'x = f"{w}/pool/pool.parquet"\n')
    assert [n for n, _ in world_layout_uses(bad)] == [1, 2, 3, 4]
    fine = ('"""Reads world.json."""\n'
            'help_text = "Demo world folder with heldout/ and rare/."\n'
            'label = "common (heldout)"\n'
            'name = "heldout_typical"\n')
    assert world_layout_uses(fine) == []


AUX_OWNER = "curate/aux_labels.py"
AUX_NAMES = re.compile(r"(?:^|/)aux_label(?:\.jsonl)?(?:/|$)")


def aux_label_uses(source: str) -> list[tuple[int, str]]:
    """Literals that name ``aux_label.jsonl`` or TRIDENT's ``aux_label/`` folder."""
    return [(n, s) for n, s in string_literals(source) if AUX_NAMES.search(s)]


def test_only_the_aux_label_module_knows_aux_label_jsonl():
    offenders = [f"{rel}:{n}: {s!r}" for rel, src in product_modules() if rel != AUX_OWNER
                 for n, s in aux_label_uses(src)]
    assert not offenders, ("these modules name aux_label.jsonl themselves; read and write it through "
                           "curate.aux_labels:\n" + "\n".join(offenders))
    assert [n for n, _ in aux_label_uses('AUX = "aux_label.jsonl"\np = root / "aux_label" / AUX\n')] == [1, 2]

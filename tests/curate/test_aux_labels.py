"""curate.aux_labels: the one reader and writer of aux_label.jsonl, and its one policy.

Every reader (the TRIDENT trainer, the review) refuses a malformed line or a pair given
twice with its line number; nothing is skipped silently or returned half-read.
"""

from __future__ import annotations

import json

import pytest

from curate.aux_labels import (
    format_aux_labels,
    parse_aux_labels,
    read_aux_labels,
    trident_path,
    write_aux_labels,
)
from curate.errors import CurateError

GOOD = [("striped lemon", ["yellow", "round", "bright"]), ("red heart", ["shiny", "smooth", "bright"])]


def test_written_as_trident_writes_it_and_read_back(tmp_path):
    path = write_aux_labels(trident_path(tmp_path), GOOD)
    assert path == tmp_path / "aux_label" / "aux_label.jsonl"
    # json.dumps defaults, one single-key object per line, in the given order
    assert path.read_text() == "".join(json.dumps({p: w}) + "\n" for p, w in GOOD)
    assert read_aux_labels(path) == dict(GOOD)
    assert list(read_aux_labels(path)) == ["striped lemon", "red heart"]


def test_blank_lines_and_empty_words_are_fine():
    text = '\n{"red heart": [" shiny ", "", "smooth"]}\n\n{"blue star": []}\n'
    assert parse_aux_labels(text, "f") == {"red heart": ["shiny", "smooth"], "blue star": []}


@pytest.mark.parametrize("line, message", [
    ("red heart: shiny, smooth", r"f:2: line 2 is not JSON"),
    ('["red heart", ["shiny"]]', r"f:2: line 2 is a JSON list, not an object"),
    ("{}", r"f:2: line 2 names no pair"),
    ('{"pair": "red heart", "aux": ["shiny"]}', r"f:2: line 2 holds 2 pairs, not one"),
    ('{"  ": ["shiny"]}', r"f:2: line 2: '  ' is not a pair name"),
    ('{"red heart": "shiny, smooth"}', r"f:2: line 2: the words of 'red heart' are not a list of strings"),
    ('{"red heart": ["shiny", 3]}', r"f:2: line 2: the words of 'red heart' are not a list of strings"),
    ('{"striped lemon": ["sour"]}', r"f:2: pair 'striped lemon' given twice \(lines 1 and 2\)"),
    ('{"red heart": ["a"], "red heart": ["b"]}', r"f:2: pair 'red heart' given twice on one line"),
])
def test_a_malformed_line_is_refused_with_its_line_number(line, message):
    text = '{"striped lemon": ["yellow"]}\n' + line + "\n"
    with pytest.raises(CurateError, match=message) as e:
        parse_aux_labels(text, "f")
    assert e.value.fix


def test_names_folded_by_the_callers_key_are_duplicates_too():
    fold = str.lower
    text = '{"Red heart": ["a"]}\n{"red heart": ["b"]}\n'
    assert parse_aux_labels(text, "f") == {"Red heart": ["a"], "red heart": ["b"]}
    with pytest.raises(CurateError, match=r"given twice \(lines 1 and 2\)"):
        parse_aux_labels(text, "f", key=fold)


def test_unreadable_files_are_clear_errors(tmp_path):
    with pytest.raises(CurateError, match="not found"):
        read_aux_labels(tmp_path / "nope.jsonl")
    bad = tmp_path / "aux_label.jsonl"
    bad.write_bytes(b'{"red heart": ["\xff"]}\n')
    with pytest.raises(CurateError, match="cannot read"):
        read_aux_labels(bad)


def test_the_writer_never_writes_what_the_reader_refuses(tmp_path):
    with pytest.raises(ValueError):
        format_aux_labels([("red heart", ["a"]), ("red heart", ["b"])])
    with pytest.raises(ValueError):
        format_aux_labels([(" ", ["a"])])
    assert not (tmp_path / "x.jsonl").exists()


def test_the_review_and_the_trainer_apply_the_same_policy(tmp_path):
    from annotations.aux_labels import read_aux_labels as review_reads
    from training.trident.data import read_aux_file

    path = tmp_path / "aux_label.jsonl"
    path.write_text('{"Striped_Lemon": ["Yellow", "round"]}\n')
    assert review_reads(path).by_pair == {"striped lemon": ["yellow", "round"]}
    assert read_aux_file(path) == {"Striped_Lemon": ["Yellow", "round"]}
    assert review_reads(tmp_path / "missing.jsonl").by_pair == {}  # no file: nothing to show
    path.write_text('{"striped lemon": ["yellow"]}\nnot json\n')
    for read in (review_reads, read_aux_file):
        with pytest.raises(CurateError, match=r"aux_label.jsonl:2: line 2 is not JSON"):
            read(path)
    path.write_text('{"striped lemon": ["yellow"]}\n{"Striped_Lemon": ["sour"]}\n')
    with pytest.raises(CurateError, match="given twice"):  # the review folds names: the same pair
        review_reads(path)

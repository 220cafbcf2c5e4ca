"""`curate doctor`: a table of OK/FAIL with the fix for each failure, exit 1 on a required failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from curate import doctor

CURATE = str(Path(sys.executable).with_name("curate"))
ENV = {**os.environ, "COLUMNS": "250"}


def test_doctor_checks_this_environment():
    r = subprocess.run([CURATE, "doctor", "--skip-database"], capture_output=True, text=True, env=ENV)
    table = r.stderr
    for name in ("python 3.11", "package torch", "package polars", "package webdataset", "fiftyone mongod binary",
                 "LLM SmolLM2-135M GGUF", "demo mini-CLIP (cached)"):
        assert name in table, name
    required_fail = [ln for ln in table.splitlines() if " FAIL " in ln]
    assert r.returncode == (1 if required_fail else 0), table
    assert ("All required checks passed." in table) == (not required_fail)
    # every row that is not OK carries its fix
    for ln in table.splitlines():
        if " MISSING " in ln or " FAIL " in ln:
            cells = [c.strip() for c in ln.split("│")]
            assert cells[-2], ln


def test_missing_required_package_fails_with_its_fix(monkeypatch, capsys):
    """A distribution that is not installed is a FAIL row naming the install command."""
    from typer.testing import CliRunner

    monkeypatch.setattr(doctor, "PACKAGES", [("polars", "polars"), ("curate-no-such-dist", "curate_no_such_mod")])
    checks = {c.name: c for c in doctor.check_packages()}
    assert checks["package polars"].ok
    missing = checks["package curate-no-such-dist"]
    assert not missing.ok and missing.detail == "not installed" and missing.fix == doctor.INSTALL_FIX
    result = CliRunner().invoke(doctor.app, ["--skip-database"], env={"COLUMNS": "250"})
    out = result.output + capsys.readouterr().err
    assert result.exit_code == 1, out
    assert "package curate-no-such-dist" in out and "FAIL" in out and "make install" in out
    assert "required check(s) failed" in out


@pytest.mark.slow
def test_fiftyone_database_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("FIFTYONE_DATABASE_DIR", str(tmp_path / "db"))
    check = doctor.check_database()
    assert check.ok, (check.detail, check.fix)
    assert str(tmp_path / "db") in check.detail

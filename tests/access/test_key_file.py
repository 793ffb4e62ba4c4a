"""``cxr-keys`` and the key file: keys shown once and stored only as SHA-256 hashes, owner-only, names unique,
scopes checked; the service's view of the file follows every change."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from access_helpers import add_key

from app.access.keyfile import KeyFile
from app.access.keys_cli import main as keys_main


def test_add_stores_only_a_hash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.jsonl"
    assert keys_main(["add", "ris-gateway", "--scopes", "predict,feedback", "--file", str(path)]) == 0
    out = capsys.readouterr()
    key = out.out.strip().splitlines()[-1]
    assert key.startswith("cxr_") and len(key) >= 40
    assert key not in out.err
    text = path.read_text()
    assert key not in text and key[4:] not in text
    (entry,) = [json.loads(line) for line in text.splitlines()]
    assert entry["name"] == "ris-gateway" and entry["scopes"] == ["feedback", "predict"]
    assert entry["hash"] == "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    second = add_key(path, "viewer", "monitor")
    assert second != key
    assert KeyFile(path).lookup(key).scopes == {"predict", "feedback"}


def test_list_and_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.jsonl"
    keys = {name: add_key(path, name, scopes) for name, scopes in [("a", "predict"), ("b", "admin,monitor")]}
    capsys.readouterr()
    assert keys_main(["list", "--file", str(path)]) == 0
    listing = capsys.readouterr().out
    assert [line.split("\t")[:2] for line in listing.splitlines()] == [["a", "predict"], ["b", "admin,monitor"]]
    assert not any(key in listing for key in keys.values())
    view = KeyFile(path)
    assert view.lookup(keys["a"]).name == "a"
    assert keys_main(["revoke", "a", "--file", str(path)]) == 0
    assert view.lookup(keys["a"]) is None, "the running service's view follows the file"
    assert view.lookup(keys["b"]).name == "b"
    assert keys_main(["revoke", "a", "--file", str(path)]) == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["add", "x", "--scopes", "predict,superuser"], "unknown scope(s) superuser"),
    (["add", "x", "--scopes", ""], "no scope given"),
    (["add", "bad name", "--scopes", "predict"], "key name"),
    (["add", "dup", "--scopes", "predict"], "exists"),
])
def test_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    path = tmp_path / "keys.jsonl"
    add_key(path, "dup", "monitor")
    before = path.read_text()
    assert keys_main([*argv, "--file", str(path)]) == 2
    assert message in capsys.readouterr().err
    assert path.read_text() == before


def test_damaged_or_missing_file_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    key = add_key(path, "good", "predict")
    other = add_key(path, "other", "predict")
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n{not json\n" + lines[1].replace("predict", "root") + "\n")
    view = KeyFile(path)
    assert view.lookup(key).name == "good"
    assert view.lookup(other) is None, "a line with an unknown scope is skipped, not half-trusted"
    path.unlink()
    assert view.lookup(key) is None

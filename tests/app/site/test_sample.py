"""Reading a local sample: folders, CSV, and the refusals that say what a correct sample looks like."""

from __future__ import annotations

import pytest

from app.site.sample import SampleError, read_sample, sample_digest


def test_folder_with_class_subfolders(tmp_path):
    for name in ("NORMAL", "PNEUMONIA"):
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "a.png").write_bytes(b"x")
        (tmp_path / name / "sub" / "b.dcm").write_bytes(b"y")
    (tmp_path / "NORMAL" / ".DS_Store").write_bytes(b"")
    items = read_sample(tmp_path)
    assert [(i.path.relative_to(tmp_path).as_posix(), i.label) for i in items] == [
        ("NORMAL/a.png", 0), ("NORMAL/sub/b.dcm", 0), ("PNEUMONIA/a.png", 1), ("PNEUMONIA/sub/b.dcm", 1)]


def test_csv_relative_and_absolute_paths_and_label_forms(tmp_path):
    (tmp_path / "list.csv").write_text(f"path,label\nfilms/a.png,NORMAL\n{tmp_path / 'b.png'},1\nc.dcm,pneumonia\n\n")
    items = read_sample(tmp_path / "list.csv")
    assert [(i.path, i.label) for i in items] == [(tmp_path / "films/a.png", 0), (tmp_path / "b.png", 1),
                                                   (tmp_path / "c.dcm", 1)]


def test_unlabelled_folder_and_bad_csv_are_refused(tmp_path):
    (tmp_path / "films").mkdir()
    with pytest.raises(SampleError, match="unlabelled"):
        read_sample(tmp_path / "films")
    (tmp_path / "bad.csv").write_text("a.png,maybe\n")
    with pytest.raises(SampleError, match=r"bad.csv:1: expected 'path,label'"):
        read_sample(tmp_path / "bad.csv")
    with pytest.raises(SampleError, match="expected a folder"):
        read_sample(tmp_path / "missing")


def test_sample_digest_ignores_order_but_not_content():
    assert sample_digest(["b", "a"]) == sample_digest(["a", "b"]) != sample_digest(["a", "c"])

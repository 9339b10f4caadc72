"""fileio: files and folders appear whole or not at all; a failed write leaves the old content."""

import pytest

from tsubasa_fast.fileio import atomic_output, atomic_write_text, move_files_into


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_file_is_replaced_whole_or_kept(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and _leftovers(tmp_path) == []
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"  # readers see the old file until the rename
    assert target.read_text() == "new" and _leftovers(tmp_path) == []


def test_a_folder_is_replaced_whole_or_kept(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_output(target, directory=True) as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target, directory=True) as tmp:
            (tmp / "x").write_text("2")
            raise KeyboardInterrupt
    assert [p.name for p in target.iterdir()] == ["x"] and (target / "x").read_text() == "1"
    with atomic_output(target, directory=True) as tmp:
        (tmp / "y").write_text("3")
    assert [p.name for p in target.iterdir()] == ["y"]  # the old folder went whole
    assert _leftovers(tmp_path) == []


def test_move_files_into_keeps_other_files_and_moves_the_marker_last(tmp_path, monkeypatch):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (dst / "keep").write_text("k")
    for name in ("meta.json", "b", "a"):
        (src / name).write_text(name)
    order = []
    import os

    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (order.append(os.path.basename(b)), real(a, b)))
    move_files_into(src, dst, last="meta.json")
    assert order == ["a", "b", "meta.json"]
    assert sorted(p.name for p in dst.iterdir()) == ["a", "b", "keep", "meta.json"] and not list(src.iterdir())

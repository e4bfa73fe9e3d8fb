"""`pix2video.atomic`: outputs appear complete or not at all, with ordinary permissions."""

from __future__ import annotations

import json
import os
import stat

import pytest

from pix2video.atomic import atomic_path, atomic_write_text


def test_text_replaces_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "stats.json"
    atomic_write_text(json.dumps({"a": 1}), target)
    atomic_write_text(json.dumps({"a": 2}), target)
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]


def test_failure_keeps_previous_file_and_removes_temporary(tmp_path):
    target = tmp_path / "out.mp4"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.suffix == ".mp4" and tmp.parent == tmp_path and tmp.name.startswith(".")
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_folder_swaps_in_whole_and_failure_leaves_nothing(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "stale.png").write_text("old")
    with atomic_path(folder, directory=True) as tmp:
        (tmp / "000000.png").write_text("new")
    assert [p.name for p in folder.iterdir()] == ["000000.png"]
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "other", directory=True) as tmp:
        (tmp / "000000.png").write_text("half")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


def test_results_get_umask_permissions_not_private_ones(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.gif") as tmp:
            tmp.write_bytes(b"x")
        with atomic_path(tmp_path / "d", directory=True) as tmp:
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.gif").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755

"""Tests of `pix2video.job.cache`: keys, atomic entries, misses on damage, checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pix2video.core.edit_loop import EditCheckpoint
from pix2video.job.cache import (
    CACHE_VERSION,
    Cache,
    atomic_torch_save,
    hash_array,
    hash_file,
    make_key,
    model_fingerprint,
)
from pix2video.models import BUNDLED_MODELS


def entries(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_make_key_is_stable_and_sensitive_to_every_part():
    key = make_key("inversion", frame="abc", steps=50, prompt="a swan", model={"model": "m"})
    assert key == make_key(
        "inversion", prompt="a swan", model={"model": "m"}, steps=50, frame="abc"
    )
    assert len(key) == 64 and int(key, 16) >= 0
    others = {
        make_key("depth", frame="abc", steps=50, prompt="a swan", model={"model": "m"}),
        make_key("inversion", frame="abd", steps=50, prompt="a swan", model={"model": "m"}),
        make_key("inversion", frame="abc", steps=49, prompt="a swan", model={"model": "m"}),
        make_key("inversion", frame="abc", steps=50, prompt="a swan.", model={"model": "m"}),
        make_key("inversion", frame="abc", steps=50, prompt="a swan", model={"model": "n"}),
    }
    assert key not in others and len(others) == 5


def test_hash_array_depends_on_values_dtype_and_shape():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert hash_array(a) == hash_array(a.copy())
    assert hash_array(a) == hash_array(torch.from_numpy(a))
    assert hash_array(a) != hash_array(a.reshape(4, 3))
    assert hash_array(a) != hash_array(a.astype(np.int16))
    b = a.copy()
    b[2, 3] += 1
    assert hash_array(a) != hash_array(b)
    # a non-contiguous view hashes like its contiguous copy
    assert hash_array(a[:, ::2]) == hash_array(np.ascontiguousarray(a[:, ::2]))


def test_hash_file(tmp_path):
    path = tmp_path / "d.npy"
    np.save(path, np.ones((2, 3), np.float32))
    first = hash_file(path)
    np.save(path, np.zeros((2, 3), np.float32))
    assert hash_file(path) != first and len(first) == 64


def test_roundtrip_layout_and_no_temporaries(tmp_path):
    cache = Cache(tmp_path / "c")
    assert cache.enabled
    key = make_key("inversion", frame="f")
    x = torch.randn(1, 4, 8, 16)
    assert cache.load("inversion", key) is None
    assert cache.save("inversion", key, x[0:1])
    got = cache.load("inversion", key)
    assert torch.equal(got, x) and got.dtype == torch.float32
    assert entries(tmp_path / "c") == [f"{CACHE_VERSION}/inversion/{key}.pt"]
    cache.save("caption", key, "a black swan")
    assert cache.load("caption", key) == "a black swan"
    cache.remove("caption", key)
    assert cache.load("caption", key) is None


def test_saving_a_view_stores_only_the_view(tmp_path):
    cache = Cache(tmp_path)
    big = torch.zeros(1000, 4, 8, 8)
    cache.save("depth", "k", big[3:4])
    size = cache.path("depth", "k").stat().st_size
    assert size < 20_000  # not the 1 MB storage behind the view
    assert cache.load("depth", "k").shape == (1, 4, 8, 8)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "other-key"])
def test_damaged_entry_is_a_miss(tmp_path, damage):
    cache = Cache(tmp_path)
    cache.save("depth", "k", torch.ones(1, 1, 4, 4))
    path = cache.path("depth", "k")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:50])
    elif damage == "garbage":
        path.write_bytes(os.urandom(300))
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # an entry renamed to another key's name
        shutil.copy(path, cache.path("depth", "other"))
        assert cache.load("depth", "other") is None
        return
    assert cache.load("depth", "k") is None
    assert not path.exists()  # removed, so the next save writes a good one
    cache.save("depth", "k", torch.ones(1, 1, 4, 4))
    assert torch.equal(cache.load("depth", "k"), torch.ones(1, 1, 4, 4))


def test_disabled_cache_does_nothing(tmp_path):
    cache = Cache(None)
    assert not cache.enabled
    assert cache.save("depth", "k", torch.ones(1)) is False
    assert cache.load("depth", "k") is None
    assert cache.load_checkpoint("k", 2, 3) is None


def test_unwritable_cache_reports_and_stops_writing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = Cache(blocker)  # <file>/v1/... cannot be created
    assert cache.save("depth", "k", torch.ones(1)) is False
    assert cache.write_error
    assert cache.save("depth", "k2", torch.ones(1)) is False
    assert cache.load("depth", "k") is None


def test_atomic_save_leaves_old_entry_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    atomic_torch_save({"key": "k", "value": 1}, path)

    def boom(obj, f):
        Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"key": "k", "value": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["value"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_checkpoint_roundtrip_and_consistency_checks(tmp_path):
    cache = Cache(tmp_path)
    latents = torch.randn(3, 4, 8, 8)
    targets = {(0, 4): torch.randn(1, 4, 8, 8), (1, 4): torch.randn(1, 4, 8, 8)}
    assert cache.save_checkpoint("e", EditCheckpoint(step=4, latents=latents, x0_targets=targets))
    got = cache.load_checkpoint("e", num_frames=3, num_steps=10)
    assert isinstance(got, EditCheckpoint)
    assert got.step == 4 and torch.equal(got.latents, latents)
    assert set(got.x0_targets) == {(0, 4), (1, 4)}
    assert all(torch.equal(got.x0_targets[k], targets[k]) for k in targets)
    # a checkpoint of another frame count or a longer schedule is not resumed from
    assert cache.load_checkpoint("e", num_frames=4, num_steps=10) is None
    assert cache.load_checkpoint("e", num_frames=3, num_steps=4) is None
    cache.save("checkpoint", "bad", {"step": "x"})
    assert cache.load_checkpoint("bad", 3, 10) is None


def test_stale_temporaries_are_swept(tmp_path):
    folder = tmp_path / CACHE_VERSION / "inversion"
    folder.mkdir(parents=True)
    old, fresh = folder / ".abc.partial-old.pt", folder / ".abc.partial-fresh.pt"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    past = time.time() - 2 * 3600
    os.utime(old, (past, past))
    Cache(tmp_path)
    assert not old.exists() and fresh.exists()  # a live writer's temporary is kept


def test_model_fingerprint_of_a_folder_follows_its_files(tmp_path):
    tiny = BUNDLED_MODELS["tiny"]
    assert model_fingerprint("tiny") == model_fingerprint(str(tiny))
    copy = tmp_path / "model"
    shutil.copytree(tiny, copy)
    before = model_fingerprint(str(copy))
    assert before["model"] == str(copy.resolve())
    assert before == model_fingerprint(str(copy))
    config = copy / "unet" / "config.json"
    data = json.loads(config.read_text())
    data["_note"] = "changed"
    config.write_text(json.dumps(data))
    changed = model_fingerprint(str(copy))
    assert changed != before
    weights = next((copy / "unet").glob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert model_fingerprint(str(copy)) != changed


def test_model_fingerprint_of_a_hub_id_without_a_local_copy():
    fp = model_fingerprint("nobody/no-such-model")
    assert fp == {"model": "nobody/no-such-model", "snapshot": None}

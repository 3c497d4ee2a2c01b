"""cdd_engine/hashed_dir.py: the hashed-directory helper of checkpoints and engines.

Fresh random file contents every time; each refusal is the caller's error type with a message
that names the file and the rule.
"""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from cdd_engine import engine_format, hashed_dir
from cdd_engine.checkpoint import MIGRATIONS, CheckpointError


class MyError(RuntimeError):
    pass


@pytest.fixture
def tree(tmp_path):
    """A directory with two listed files (one in a subfolder), both record forms."""
    a = os.urandom(3001)
    b = os.urandom(17)
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(a)
    (tmp_path / "sub" / "b.json").write_bytes(b)
    files = {"a.bin": hashed_dir.file_record(tmp_path / "a.bin"),                     # engine form
             "sub/b.json": hashed_dir.digest_id(hashlib.sha256(b).hexdigest())}       # checkpoint form
    return tmp_path, files, a, b


def test_hashes_agree_with_hashlib_and_engine_format(tree, monkeypatch):
    root, files, a, _ = tree
    monkeypatch.setattr(hashed_dir, "HASH_CHUNK", 64)  # several chunks for a 3001-byte file
    assert hashed_dir.sha256_file(root / "a.bin") == hashlib.sha256(a).hexdigest()
    assert hashed_dir.sha256_bytes(a) == hashlib.sha256(a).hexdigest()
    # the engine format's record is this helper's record (the lead switches engine_format over)
    assert hashed_dir.file_record(root / "a.bin") == engine_format.file_record(root / "a.bin")
    assert files["a.bin"]["bytes"] == 3001


def test_verify_and_read_listed(tree):
    root, files, a, b = tree
    hashed_dir.verify_files(root, files, manifest="m.json", error=MyError)
    assert hashed_dir.read_listed(root, files, "a.bin", manifest="m.json", error=MyError) == a
    assert hashed_dir.read_listed(root, files, "sub/b.json", manifest="m.json", error=MyError) == b


@pytest.mark.parametrize("damage, match", [
    (lambda r: (r / "a.bin").unlink(), r"a.bin: file listed in m.json is missing"),
    (lambda r: (r / "a.bin").write_bytes((r / "a.bin").read_bytes()[:-1]), r"a.bin: size 3000 bytes, m.json records 3001"),
    (lambda r: (r / "sub" / "b.json").write_bytes(os.urandom(17)), r"b.json: SHA-256 .* does not match .* corrupt"),
    (lambda r: ((r / "a.bin").unlink(), os.mkfifo(r / "a.bin")), r"a.bin: file listed in m.json is not a regular file"),
])
def test_damage_is_refused(tree, damage, match):
    root, files, _, _ = tree
    damage(root)
    with pytest.raises(MyError, match=match):
        hashed_dir.verify_files(root, files, manifest="m.json", error=MyError)


def test_hash_check_can_be_skipped_but_not_the_size(tree):
    root, files, _, _ = tree
    data = bytearray((root / "a.bin").read_bytes())
    data[5] ^= 0xFF
    (root / "a.bin").write_bytes(bytes(data))
    hashed_dir.verify_files(root, files, manifest="m.json", error=MyError, verify_hashes=False)
    with pytest.raises(MyError, match="SHA-256"):
        hashed_dir.verify_files(root, files, manifest="m.json", error=MyError)


def test_unlisted_names_and_bad_records_are_refused(tree):
    root, files, _, _ = tree
    (root / "extra.txt").write_text("x")
    with pytest.raises(MyError, match="records no hash for extra.txt"):
        hashed_dir.read_listed(root, files, "extra.txt", manifest="m.json", error=MyError)
    assert hashed_dir.unlisted_files(root, files, manifest="m.json") == ["extra.txt"]
    assert hashed_dir.unlisted_files(root, files, manifest="m.json", ignore=lambda n: n.endswith(".txt")) == []
    for bad in ("md5:00", {"sha256": "A" * 64}, {"sha256": "0" * 64, "bytes": -1}, {"sha256": "0" * 64, "bytes": True}):
        with pytest.raises(MyError, match="record of x"):
            hashed_dir.verify_files(root, {"x": bad}, manifest="m.json", error=MyError)
    for name in ("../a.bin", "/etc/passwd", ""):
        with pytest.raises(MyError, match="not a relative path inside"):
            hashed_dir.verify_files(root, {name: files["a.bin"]}, manifest="m.json", error=MyError)


def test_atomic_write_replaces_whole_files(tmp_path):
    target = tmp_path / "d" / "f.json"
    for _ in range(3):
        data = os.urandom(100)
        hashed_dir.atomic_write(target, data)
        assert target.read_bytes() == data
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]  # no temporary left behind


def test_migrations_upgrade_in_order_and_refuse_newer_or_gapped():
    m = hashed_dir.Migrations("demo", current=3, error=MyError)

    @m.register(1)
    def _v1(doc):
        return dict(doc, files={k: "sha256:" + v for k, v in doc["hashes"].items()})

    @m.register(2)
    def _v2(doc):
        doc.pop("hashes")
        return doc

    got = m.upgrade({"format_version": 1, "hashes": {"a": "0" * 64}}, what="x.json")
    assert got == {"format_version": 3, "files": {"a": "sha256:" + "0" * 64}}
    assert m.upgrade({"format_version": 3, "k": 1}, what="x.json") == {"format_version": 3, "k": 1}
    assert m.readable() == [1, 2, 3]
    with pytest.raises(MyError, match="format version 4.*newer"):
        m.upgrade({"format_version": 4}, what="x.json")
    with pytest.raises(MyError, match="no migration from version 0"):
        m.upgrade({"format_version": 0}, what="x.json")
    for bad in (True, 1.0, "1", None):
        with pytest.raises(MyError, match="format_version must be an integer"):
            m.upgrade({"format_version": bad}, what="x.json")
    with pytest.raises(ValueError, match="already registered"):
        m.register(1)
    with pytest.raises(ValueError, match=r"in \[1, 3\)"):
        m.register(3)


def test_checkpoint_reads_through_its_migration_registry(tmp_path, monkeypatch):
    """checkpoint.read_config applies checkpoint.MIGRATIONS: a registered step upgrades an old config."""
    from cdd_engine import checkpoint
    assert MIGRATIONS.current == checkpoint.FORMAT_VERSION and MIGRATIONS.error is CheckpointError
    m = hashed_dir.Migrations(checkpoint.FORMAT, checkpoint.FORMAT_VERSION + 1, error=CheckpointError)
    m.register(checkpoint.FORMAT_VERSION)(lambda doc: dict(doc, migrated=True))
    monkeypatch.setattr(checkpoint, "MIGRATIONS", m)
    monkeypatch.setattr(checkpoint, "model_config_problems", lambda model: [])
    cfg = {"format": checkpoint.FORMAT, "format_version": checkpoint.FORMAT_VERSION,
           **{k: {} for k in checkpoint.REQUIRED_KEYS}}
    (tmp_path / checkpoint.CONFIG_FILE).write_text(json.dumps(cfg))
    got = checkpoint.read_config(tmp_path)
    assert got["migrated"] is True and got["format_version"] == checkpoint.FORMAT_VERSION + 1


def test_engine_format_messages_survive_a_switch(tmp_path):
    """engine_format.read_manifest's file checks, done by this helper with EngineFormatError, give the
    messages the engine tests look for (tests/test_engine_errors.py, test_engine_fail_closed.py)."""
    from cdd_engine.errors import EngineFormatError
    for name in ("model.safetensors", "model.xml", "model.bin"):
        (tmp_path / name).write_bytes(os.urandom(1000))
    files = {n: engine_format.file_record(tmp_path / n) for n in ("model.safetensors", "model.xml", "model.bin")}

    def check(match):
        with pytest.raises(EngineFormatError, match=match):
            hashed_dir.verify_files(tmp_path, files, manifest=engine_format.MANIFEST, error=EngineFormatError)

    (tmp_path / "model.safetensors").write_bytes(os.urandom(1000))
    check("model.safetensors: SHA-256 .* does not match")
    (tmp_path / "model.safetensors").unlink()
    check("model.safetensors: file listed in engine.json is missing")
    files.pop("model.safetensors")
    (tmp_path / "model.bin").write_bytes(os.urandom(999))
    check("model.bin: size 999 bytes")
    (tmp_path / "model.bin").unlink()
    (tmp_path / "model.bin").mkdir()
    check("model.bin: file listed in engine.json is not a regular file")

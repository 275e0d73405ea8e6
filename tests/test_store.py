"""The content-addressed object store, in git-lfs's layout."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from git_theta.errors import CorruptObjectError
from git_theta.store import ObjectRef, ObjectStore, valid_oid
from tests.helpers import read_only

DATA = b"hello git-theta\n"
OID = "a08f936c37d8e494fa4e9b5e39b2671970a454363b0c6ddff9fc26837410105a"


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    return ObjectStore(tmp_path / "lfs")


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if not p.is_dir())


def test_put_returns_sha256_and_size(store: ObjectStore) -> None:
    assert hashlib.sha256(DATA).hexdigest() == OID
    assert store.put([DATA]) == ObjectRef(OID, len(DATA))


def test_put_concatenates_chunks_of_any_kind(store: ObjectStore) -> None:
    chunks = [DATA[:3], memoryview(DATA[3:9]), b"", bytearray(DATA[9:])]
    assert store.put(chunks) == ObjectRef(OID, len(DATA))
    assert store.read(OID) == DATA


def test_put_of_nothing_is_the_empty_object(store: ObjectStore) -> None:
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert store.put([]) == ObjectRef(empty, 0)
    assert store.read(empty) == b""


def test_object_lives_in_the_lfs_layout_with_mode_0644(store: ObjectStore, tmp_path: Path) -> None:
    store.put([DATA])
    expected = tmp_path / "lfs" / "theta" / "objects" / OID[0:2] / OID[2:4] / OID
    assert store.path(OID) == expected
    verified = tmp_path / "lfs" / "theta" / "verified"
    # nothing else (the record of sound objects aside), nothing left in tmp/
    assert files_under(tmp_path / "lfs") == [expected, verified]
    assert expected.read_bytes() == DATA
    assert stat.S_IMODE(expected.stat().st_mode) == 0o644
    assert store.has(OID)


def test_put_of_an_existing_object_keeps_it_and_freshens_its_time(store: ObjectStore) -> None:
    # the new time keeps `git theta gc` from deleting it before the manifest naming it lands
    store.put([DATA])
    path = store.path(OID)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    before = path.stat()
    assert store.put([DATA[:5], DATA[5:]]) == ObjectRef(OID, len(DATA))
    after = path.stat()
    assert after.st_ino == before.st_ino
    assert after.st_mtime > time.time() - 60
    assert files_under(store.tmp_dir) == []
    assert store.is_sound(ObjectRef(OID, len(DATA)))


def test_failing_chunk_iterator_leaves_nothing_behind(store: ObjectStore) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"first part"
        yield b"second part"
        raise RuntimeError("encoder failed")

    with pytest.raises(RuntimeError, match="^encoder failed$"):
        store.put(chunks())
    assert files_under(store.objects_dir) == []
    assert files_under(store.tmp_dir) == []


def test_interrupt_mid_write_leaves_nothing_behind(store: ObjectStore) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"x" * 1000
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.put(chunks())
    assert files_under(store.lfs_dir) == []


def test_read_returns_verified_bytes(store: ObjectStore) -> None:
    store.put([DATA])
    assert store.read(OID) == DATA


def test_read_of_tampered_object_is_corrupt(store: ObjectStore) -> None:
    store.put([DATA])
    path = store.path(OID)
    path.write_bytes(DATA.replace(b"git", b"GIT"))
    with pytest.raises(CorruptObjectError) as info:
        store.read(OID)
    assert str(info.value) == (
        f"object {OID[:12]}… in {store.objects_dir} is corrupt (its sha256 does not match): "
        "run `git theta fsck --fetch` to download a good copy"
    )


def test_read_of_truncated_object_is_corrupt(store: ObjectStore) -> None:
    store.put([DATA])
    store.path(OID).write_bytes(DATA[:-1])
    with pytest.raises(CorruptObjectError):
        store.read(OID)


def test_read_of_missing_object(store: ObjectStore) -> None:
    assert not store.has(OID)
    with pytest.raises(FileNotFoundError):
        store.read(OID)


def test_put_replaces_a_truncated_copy(store: ObjectStore) -> None:
    store.put([DATA])
    store.path(OID).write_bytes(DATA[:4])
    assert store.put([DATA]) == ObjectRef(OID, len(DATA))
    assert store.read(OID) == DATA


@pytest.mark.parametrize(
    "oid",
    [
        "../../etc/passwd",
        "../" + OID[3:],
        OID.upper(),
        OID[:63],
        OID + "0",
        "",
        OID[:62] + "/x",
        OID[:63] + "g",
        "sha256:" + OID[:57],
    ],
)
def test_path_rejects_invalid_oids(store: ObjectStore, oid: str) -> None:
    assert not valid_oid(oid)
    with pytest.raises(CorruptObjectError) as info:
        store.path(oid)
    assert str(info.value) == f"`{oid[:80]}` is not a valid object id"
    with pytest.raises(CorruptObjectError):
        store.has(oid)
    with pytest.raises(CorruptObjectError):
        store.read(oid)


def test_store_layout_works_with_git_lfs(store: ObjectStore, tmp_path: Path) -> None:
    """An object put here and exported is one that `git lfs` itself finds (no remote is
    configured)."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    repo_store = ObjectStore(repo / ".git" / "lfs")
    ref = repo_store.put([DATA])
    repo_store.export_to_lfs([ref.oid])
    exported = repo / ".git" / "lfs" / "objects" / OID[0:2] / OID[2:4] / OID
    assert os.path.samefile(exported, repo_store.path(OID))  # a hard link: no extra space
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{ref.oid}\nsize {ref.size}\n"
    smudged = subprocess.run(
        ["git", "lfs", "smudge", "weights.bin"],
        cwd=repo,
        input=pointer.encode(),
        capture_output=True,
        check=True,
    )
    assert smudged.stdout == DATA


def test_an_object_git_lfs_downloaded_is_taken_in(store: ObjectStore) -> None:
    lfs_copy = store.lfs_path(OID)
    lfs_copy.parent.mkdir(parents=True)
    lfs_copy.write_bytes(DATA)
    assert store.has(OID)
    assert store.path(OID) == store.objects_dir / OID[0:2] / OID[2:4] / OID
    assert os.path.samefile(store.path(OID), lfs_copy)
    lfs_copy.unlink()  # what `git lfs prune` does: the store keeps it
    assert store.read(OID) == DATA


def test_a_read_only_store_serves_git_lfs_copies(store: ObjectStore) -> None:
    lfs_copy = store.lfs_path(OID)
    lfs_copy.parent.mkdir(parents=True)
    lfs_copy.write_bytes(DATA)
    with read_only(store.lfs_dir):
        assert store.path(OID) == lfs_copy and store.is_sound(ObjectRef(OID, len(DATA)))
        assert store.read(OID) == DATA
    assert not store.objects_dir.exists()


def test_put_replaces_a_corrupt_copy_of_the_same_size(store: ObjectStore) -> None:
    store.put([DATA])
    path = store.path(OID)
    path.write_bytes(bytes([DATA[0] ^ 1]) + DATA[1:])  # one flipped bit
    assert not store.is_sound(ObjectRef(OID, len(DATA)))
    assert store.put([DATA]) == ObjectRef(OID, len(DATA))
    assert path.read_bytes() == DATA and store.is_sound(ObjectRef(OID, len(DATA)))


def test_soundness_is_remembered_until_the_file_changes(store: ObjectStore) -> None:
    ref = store.put([DATA])
    fresh = ObjectStore(store.lfs_dir)  # another process
    assert fresh.is_sound(ref)
    assert (store.lfs_dir / "theta" / "verified").read_text().split()[0] == OID
    path = store.path(OID)
    before = path.stat()
    path.write_bytes(DATA.upper())  # same size, other bytes, a new modification time
    assert path.stat().st_mtime_ns != before.st_mtime_ns
    assert not ObjectStore(store.lfs_dir).is_sound(ref)
    assert not store.is_sound(ObjectRef(OID, len(DATA) + 1))


def test_delete_removes_the_object_and_its_git_lfs_link(store: ObjectStore) -> None:
    ref = store.put([DATA])
    store.export_to_lfs([ref.oid])
    assert store.delete(OID, lfs_copy=True) == len(DATA)
    assert not store.path(OID).exists() and not store.lfs_path(OID).exists()
    store.put([DATA])
    store.export_to_lfs([ref.oid])
    assert store.delete(OID, lfs_copy=False) == 0  # git-lfs's name still holds the bytes
    assert store.lfs_path(OID).read_bytes() == DATA
    store.forget_deleted()
    assert OID not in (store.lfs_dir / "theta" / "verified").read_text()


def test_check_hashes_whatever_is_remembered(store: ObjectStore) -> None:
    ref = store.put([DATA])
    path = store.path(OID)
    assert store.check(ref) is None
    before = path.stat()
    path.write_bytes(DATA.upper())  # decays in place: same size, and the old times put back
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert store.is_sound(ref)  # the remembered signature still matches: not hashed again
    assert store.check(ref) == (
        f"is corrupt: its bytes hash to {hashlib.sha256(DATA.upper()).hexdigest()[:12]}…, "
        "not to its id"
    )
    assert not store.is_sound(ref)  # and from now on it is hashed again
    assert not ObjectStore(store.lfs_dir).is_sound(ref)  # in other processes too
    assert (
        store.check(ObjectRef(OID, 3)) == f"has {len(DATA)} bytes, not the 3 its manifest records"
    )
    path.unlink()
    assert store.check(ref) == "is missing"


def test_set_aside_and_put_back(store: ObjectStore) -> None:
    ref = store.put([DATA])
    store.export_to_lfs([OID])
    store.path(OID).write_bytes(DATA.upper())
    aside = store.set_aside(OID)
    assert aside is not None and aside.read_bytes() == DATA.upper()
    assert aside.parent == store.tmp_dir and aside.name.startswith("theta-")
    assert not store.has(OID)  # git-lfs's name for the same file went too
    store.put_back(OID, aside)  # nothing better came: the copy returns
    assert store.path(OID).read_bytes() == DATA.upper() and not aside.exists()
    aside = store.set_aside(OID)
    assert aside is not None
    assert store.put([DATA]) == ref  # a good copy came meanwhile: the bad one is dropped
    store.put_back(OID, aside)
    assert store.path(OID).read_bytes() == DATA and not aside.exists()
    assert store.set_aside("0" * 64) is None


def test_set_aside_keeps_a_separate_sound_git_lfs_copy(store: ObjectStore) -> None:
    store.lfs_path(OID).parent.mkdir(parents=True)
    store.lfs_path(OID).write_bytes(DATA)
    own = store.objects_dir / OID[:2] / OID[2:4] / OID
    own.parent.mkdir(parents=True)
    own.write_bytes(DATA.upper())
    assert store.set_aside(OID) is not None
    assert store.path(OID).read_bytes() == DATA  # taken in from git-lfs's good copy


def test_a_download_is_taken_in_as_sound_without_hashing(store: ObjectStore) -> None:
    twin = store.lfs_path(OID)
    twin.parent.mkdir(parents=True)
    twin.write_bytes(DATA)
    store.accept_download(ObjectRef(OID, len(DATA)))
    own = store.objects_dir / OID[:2] / OID[2:4] / OID
    assert own.is_file() and os.path.samefile(own, twin)
    line = (store.lfs_dir / "theta" / "verified").read_text().split()
    assert line[:2] == [OID, str(len(DATA))]
    store.accept_download(ObjectRef("0" * 64, 1))  # not downloaded: nothing happens
    assert not (store.objects_dir / "00").exists()


def test_a_replaced_copy_is_also_what_git_lfs_uploads(store: ObjectStore) -> None:
    store.put([DATA])
    store.export_to_lfs([OID])  # a hard link: one file, two names
    with open(store.path(OID), "r+b") as f:  # decays in place, under both names
        f.write(DATA.upper())
    assert store.lfs_path(OID).read_bytes() == DATA.upper()
    store.put([DATA])  # git add of an intact copy
    assert store.path(OID).read_bytes() == DATA
    assert store.lfs_path(OID).read_bytes() == DATA
    assert os.path.samefile(store.path(OID), store.lfs_path(OID))


def test_export_links_the_store_copy_over_a_separate_git_lfs_copy(store: ObjectStore) -> None:
    store.put([DATA])
    twin = store.lfs_path(OID)
    twin.parent.mkdir(parents=True)
    twin.write_bytes(DATA.upper())  # another, damaged file under git-lfs's name
    store.export_to_lfs([OID])
    assert twin.read_bytes() == DATA and os.path.samefile(twin, store.path(OID))


def test_delete_spares_an_object_stored_again_after_the_cutoff(store: ObjectStore) -> None:
    store.put([DATA])
    assert store.delete(OID, lfs_copy=True, older_than=time.time() - 60) is None
    assert store.has(OID)
    assert store.delete(OID, lfs_copy=True, older_than=time.time() + 1) == len(DATA)


def test_put_stores_again_an_object_deleted_after_it_was_found_sound(
    store: ObjectStore,
) -> None:
    ref = store.put([DATA])
    assert store.is_sound(ref)  # remembered
    store.delete(OID, lfs_copy=True)  # gc, between the check and the freshening
    assert store.put([DATA]) == ref
    assert store.path(OID).read_bytes() == DATA


def test_a_set_aside_copy_is_new_for_gc(store: ObjectStore) -> None:
    store.put([DATA])
    os.utime(store.path(OID), (1, 1))
    aside = store.set_aside(OID)
    assert aside is not None and aside.stat().st_mtime > time.time() - 60

"""The file blob store: hashing while writing, atomic placement, safe keys."""

import hashlib

import pytest

from xds.blobstore import FileBlobStore


def test_spool_hashes_counts_and_commits(tmp_path):
    store = FileBlobStore(tmp_path)
    data = [b"abc" * 1000, b"", b"\x00\xff" * 7]
    spool = store.spool()
    for chunk in data:
        spool.write(chunk)
    store.commit(spool, "doc/one")
    whole = b"".join(data)
    assert spool.sha1 == hashlib.sha1(whole).hexdigest()
    assert spool.size == len(whole)
    assert b"".join(store.iter_bytes("doc/one", chunk_size=100)) == whole
    assert list((tmp_path / "tmp").iterdir()) == []


def test_discarded_spool_leaves_nothing(tmp_path):
    store = FileBlobStore(tmp_path)
    with pytest.raises(RuntimeError):
        with store.spool() as spool:
            spool.write(b"partial")
            raise RuntimeError("failed half way")
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not store.exists("doc/one")


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/absolute", "spaces not allowed", ""])
def test_unsafe_keys_are_refused(tmp_path, key):
    with pytest.raises(ValueError):
        FileBlobStore(tmp_path).path(key)

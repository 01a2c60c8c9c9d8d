"""Fault injection on the durable writes (services/fsutil.py) and the API's journal: a failed write
leaves the previous file as it was, leaves no temporary file, and raises the reason."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest

from app.canvas.controller import CanvasController
from services import fsutil
from services.engine.session import Session
from services.stores.journal import Journal
from services.stores.sessions import DiskSessionStore

OLD = b'{"the": "previous file"}'


@pytest.fixture
def target(tmp_path):
    path = tmp_path / "data" / "file.json"
    path.parent.mkdir()
    path.write_bytes(OLD)
    return path


def test_a_crash_between_write_and_rename_keeps_the_previous_file(target, monkeypatch):
    def crash(src, dst):
        assert os.path.getsize(src) == len(b"new content")  # the new bytes were written and flushed
        raise KeyboardInterrupt  # anything at all: a signal, a bug

    monkeypatch.setattr(fsutil.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        fsutil.atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == OLD and os.listdir(target.parent) == ["file.json"]


def test_a_full_disk_in_the_middle_of_a_write_keeps_the_previous_file(target, monkeypatch):
    real_write = os.write

    def full_after_4_bytes(fd, data):
        if os.fstat(fd).st_size >= 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, bytes(data[:4]))

    monkeypatch.setattr(fsutil.os, "write", full_after_4_bytes)
    with pytest.raises(OSError) as failed:
        fsutil.atomic_write_text(target, "a much longer new content")
    assert failed.value.errno == errno.ENOSPC
    assert target.read_bytes() == OLD and os.listdir(target.parent) == ["file.json"]


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_a_real_write_limit_from_the_kernel_keeps_the_previous_file(target):
    """Not a patch: the kernel refuses the bytes past 64 KiB (RLIMIT_FSIZE), as a full disk would."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from services.fsutil import atomic_write_bytes
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        try:
            atomic_write_bytes({str(target)!r}, b"x" * 200_000)
        except OSError as exc:
            print(exc.errno, exc.strerror)
            sys.exit(3)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 3, done.stderr
    assert done.stdout.split()[0] == str(errno.EFBIG)
    assert target.read_bytes() == OLD and os.listdir(target.parent) == ["file.json"]


def test_every_store_and_settings_write_goes_through_the_helper(services, monkeypatch, tmp_path):
    """Sessions, images and settings: a full disk leaves each previous file whole and says so."""
    from PIL import Image

    store: DiskSessionStore = services.sessions
    session = Session()
    store.save(session)
    saved = store._path(session.id).read_bytes()
    services.settings.save()
    settings_before = services.settings.path.read_bytes()

    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil.os, "write", full_disk)
    session.ui["positions"] = {"x": [1, 2]}
    with pytest.raises(OSError):
        store.save(session)
    with pytest.raises(OSError):
        services.images.save(Image.new("RGB", (8, 8)))
    services.settings.theme = "light"
    with pytest.raises(OSError):
        services.settings.save()
    monkeypatch.undo()
    assert store._path(session.id).read_bytes() == saved and services.settings.path.read_bytes() == settings_before
    assert services.images.list() == []
    leftovers = [p for folder in (store.folder, services.images.folder, services.settings.config_dir)
                 for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_the_canvas_reports_a_failed_save_and_keeps_the_previous_file(invoker, monkeypatch, tmp_path):
    c = CanvasController(invoker)
    try:
        c.new_demo()
        path = tmp_path / "graph.json"
        assert c.save(path)
        before = path.read_bytes()
        c.set_value("blend", "alpha", 0.3)

        def full_disk(fd, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(fsutil.os, "write", full_disk)
        assert not c.save()
        monkeypatch.undo()
        assert c.message_is_error and "No space left on device" in c.message and str(path) in c.message
        assert path.read_bytes() == before and c.dirty
    finally:
        c.close()


def test_journal_replay_skips_a_torn_last_record(tmp_path):
    journal = Journal(tmp_path)
    journal.append({"n": 1})
    journal.append({"n": 2})
    journal.close()
    segment = journal.segments()[-1]
    with open(segment, "r+b") as handle:  # a crash in the middle of writing record 3
        end = segment.read_bytes().rstrip(b"\0")
        handle.seek(len(end))
        handle.write(b'\n{"n": 3, "half')
    assert [r["n"] for r in Journal(tmp_path).records([segment])] == [1, 2]
    assert json.loads(end.split(b"\n")[-2]) == {"n": 2}

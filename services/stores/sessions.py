"""The session store (JSON files on disk, recent sessions in memory) and reading/writing session
files a user picks (Save / Open), including graphs embedded in PNGs the app produced."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from nodes.core.untrusted import MAX_JSON_BYTES, UntrustedInputError, load_json, regular_file

from services.fsutil import atomic_write_text, remove
from services.engine.graph import Graph, GraphError
from services.stores.images import read_embedded
from services.lru import LRU
from services.engine.session import Session, SessionFormatError, is_valid_session_id


class SessionNotFoundError(KeyError):
    def __str__(self) -> str:
        return f"no session {self.args[0]!r}"


class SessionFileError(ValueError):
    """A file that cannot be opened as a session; the message names the file and the reason."""


class SessionStore(ABC):
    @abstractmethod
    def save(self, session: Session) -> None: ...

    @abstractmethod
    def get(self, session_id: str) -> Session: ...

    @abstractmethod
    def exists(self, session_id: str) -> bool: ...

    @abstractmethod
    def list(self, offset: int = 0, limit: int = 50) -> list[str]:
        """Session ids, newest first."""

    @abstractmethod
    def delete(self, session_id: str) -> None: ...


class DiskSessionStore(SessionStore):
    def __init__(self, folder: str | Path, cache_size: int = 32) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._cache: LRU[str, Session] = LRU(cache_size)

    def _path(self, session_id: str) -> Path:
        if not is_valid_session_id(session_id):
            raise SessionNotFoundError(session_id)
        return self.folder / f"{session_id}.json"

    def save(self, session: Session) -> None:
        atomic_write_text(self._path(session.id), session.to_json())
        self._cache.put(session.id, session)

    def get(self, session_id: str) -> Session:
        cached = self._cache.get(session_id)
        if cached is not None:
            return cached
        path = self._path(session_id)
        if not path.is_file():
            raise SessionNotFoundError(session_id)
        session = read_session_file(path)
        self._cache.put(session_id, session)
        return session

    def exists(self, session_id: str) -> bool:
        try:
            return session_id in self._cache or self._path(session_id).is_file()
        except (SessionNotFoundError, OSError):  # OSError: an id too long for the file system
            return False

    def list(self, offset: int = 0, limit: int = 50) -> list[str]:
        files = sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        return [p.stem for p in files[offset: offset + limit]]

    def delete(self, session_id: str) -> None:
        self._cache.pop(session_id)
        try:
            remove(self._path(session_id))
        except FileNotFoundError:
            raise SessionNotFoundError(session_id) from None


def write_session_file(session: Session, path: str | Path) -> None:
    """Save for a user: indented, so the file reads and diffs well."""
    atomic_write_text(path, session.to_json(indent=1))


def read_session_file(path: str | Path) -> Session:
    """Open a saved session (.json) or the graph embedded in a PNG the app made (a new session)."""
    path = Path(path)
    try:
        size = regular_file(path).stat().st_size  # a FIFO would block the read, a huge file fill the memory
        if size > MAX_JSON_BYTES:
            raise SessionFileError(f"{path}: too large ({size} bytes; at most {MAX_JSON_BYTES})")
        if path.suffix.lower() == ".png":
            embedded = read_embedded(path)
            if not embedded or not isinstance(embedded.get("graph"), dict):
                raise SessionFileError(f"{path}: this PNG carries no invoke-nodes graph")
            ui = embedded["graph"].get("ui")  # node positions, in PNGs made since they are embedded
            ui = {"positions": dict(ui["positions"])} if isinstance(ui, dict) and isinstance(ui.get("positions"), dict) else {}
            return Session(Graph.from_dict(embedded["graph"]), change=f"from image {path.name}", ui=ui)
        return Session.from_json(path.read_bytes())
    except (SessionFormatError, GraphError, ValueError) as exc:  # UntrustedInputError is a ValueError
        if isinstance(exc, SessionFileError):
            raise
        text = str(exc)  # some readers already name the file: name it once
        raise SessionFileError(text if text.startswith(str(path)) else f"{path}: {text}") from None
    except OSError as exc:
        raise SessionFileError(f"{path}: {exc.strerror or exc}") from None


def graph_from_json_text(text: str) -> Graph:
    try:
        data = load_json(text)
    except UntrustedInputError as exc:
        raise GraphError(str(exc)) from None
    return Graph.from_dict(data)

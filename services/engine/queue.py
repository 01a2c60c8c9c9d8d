"""The invocation queue: jobs (session id + run mode) waiting for the invoker's runner threads.
A session runs on one runner at a time: `get` hands out a job only while no other job of its
session is out, and `done` gives the session back."""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Job:
    session_id: str
    run_all: bool = True
    only: frozenset[str] | None = None  # run just these nodes ("run to here": a node and what it needs)


class InvocationQueue(ABC):
    @abstractmethod
    def put(self, job: Job) -> None: ...

    @abstractmethod
    def get(self, timeout: float | None = None) -> Job | None:
        """The next job whose session is not running, or None after `timeout` seconds or once closed."""

    @abstractmethod
    def done(self, job: Job) -> None:
        """The job that `get` handed out has finished: its session's next job may go."""

    @abstractmethod
    def remove(self, session_id: str) -> int:
        """Drop the queued jobs of one session; returns how many."""

    @abstractmethod
    def close(self) -> None: ...

    def jobs(self) -> list[Job]:
        """The waiting jobs, next first."""
        return []

    def move(self, session_id: str, delta: int) -> bool:
        """Move a session's waiting job `delta` places (negative: sooner); False when it cannot."""
        return False

    @abstractmethod
    def pause(self, paused: bool) -> None:
        """Paused, get() hands out no job (they wait in order)."""

    @property
    @abstractmethod
    def paused(self) -> bool: ...

    @property
    @abstractmethod
    def closed(self) -> bool: ...

    @abstractmethod
    def pending(self, session_id: str) -> bool: ...


class MemoryInvocationQueue(InvocationQueue):
    def __init__(self) -> None:
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._paused = False
        self._out: set[str] = set()  # sessions with a job handed out

    def put(self, job: Job) -> None:
        with self._cond:
            self._jobs.append(job)
            self._cond.notify()

    def get(self, timeout: float | None = None) -> Job | None:
        with self._cond:
            job = self._next()
            if job is None and not self._closed:
                self._cond.wait(timeout)
                job = self._next()
            if job is None or self._closed:
                return None
            self._jobs.remove(job)
            self._out.add(job.session_id)
            return job

    def _next(self) -> Job | None:
        if self._paused:
            return None
        return next((job for job in self._jobs if job.session_id not in self._out), None)

    def done(self, job: Job) -> None:
        with self._cond:
            self._out.discard(job.session_id)
            self._cond.notify_all()

    def pause(self, paused: bool) -> None:
        with self._cond:
            self._paused = paused
            self._cond.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused

    def remove(self, session_id: str) -> int:
        with self._cond:
            kept = deque(j for j in self._jobs if j.session_id != session_id)
            removed = len(self._jobs) - len(kept)
            self._jobs = kept
            return removed

    def pending(self, session_id: str) -> bool:
        with self._cond:
            return any(j.session_id == session_id for j in self._jobs)

    def jobs(self) -> list[Job]:
        with self._cond:
            return list(self._jobs)

    def move(self, session_id: str, delta: int) -> bool:
        with self._cond:
            jobs = list(self._jobs)
            index = next((i for i, j in enumerate(jobs) if j.session_id == session_id), None)
            if index is None:
                return False
            target = max(0, min(len(jobs) - 1, index + delta))
            if target == index:
                return False
            jobs.insert(target, jobs.pop(index))
            self._jobs = deque(jobs)
            return True

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

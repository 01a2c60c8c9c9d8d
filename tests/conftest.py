"""Shared fixtures: every test gets its own user folders (INVOKE_NODES_ROOT) and fresh services."""
from __future__ import annotations

import pytest

from services.config import Settings
from services.container import Services
from services.invoker import Invoker
from tests import engine_nodes  # noqa: F401 - registers the test-only nodes


@pytest.fixture
def user_root(tmp_path, monkeypatch):
    root = tmp_path / "user"
    monkeypatch.setenv("INVOKE_NODES_ROOT", str(root))
    for name in ("INVOKE_NODES_MODELS", "INVOKE_NODES_PLUGINS", "INVOKE_NODES_OUTPUTS"):
        monkeypatch.delenv(name, raising=False)
    return root


@pytest.fixture
def services(user_root) -> Services:
    return Services.local(Settings.load())


@pytest.fixture
def invoker(services):
    invoker = Invoker(services)
    yield invoker
    invoker.shutdown()


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny models run fastest on one thread; several threads on a busy 2-core machine spin for nothing."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Invokers on fresh user folders, as on another machine: no images, sessions or objects yet."""
    made: list[Invoker] = []

    def make(name: str = "elsewhere") -> Invoker:
        monkeypatch.setenv("INVOKE_NODES_ROOT", str(tmp_path / name))
        made.append(Invoker(Services.local(Settings.load())))
        return made[-1]

    yield make
    for invoker in made:
        invoker.shutdown()

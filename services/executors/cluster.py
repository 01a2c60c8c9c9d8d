"""The Ray executor: nodes that declare `runs_in_worker` run on Ray actors, one per GPU (or one per
CPU on a cluster without GPUs), each with its own stores and model cache; other nodes run here.
Ray places the actors on GPUs and machines and restarts a lost one; this module only hands each
node to a free actor, preferring one that already holds the node's models.

Where: "local" (a Ray on this machine, a worker per GPU, or per CPU without one), "local:N" (N
workers; more workers than GPUs share them), or "ray://HOST:PORT" (a running cluster whose
machines have invoke-nodes installed and the models at the same paths).

Images: a worker that can read this app's outputs folder (checked with a marker file) saves into
it; otherwise a node's input images reach it through Ray's object store and the images it saves
come back with its outputs into this app's store.

Faults: a worker lost mid-node is restarted by Ray; the node runs once more on another worker,
then fails with the reason.  Cancel reaches the worker and stops the node within one step.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import queue
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

from nodes.base import PIN_TYPES, CanceledError
from services.config import Settings
from services.engine.context import ProgressReport
from services.models.manager import ModelInfo, UnrecognizedFile
from services.stores.images import DiskImageStore

from .base import Executor, NodeCall, NodeFailedError, warm_up
from .local import InProcessExecutor
from .worker import decode_preview, raise_reply
from .worker_process import encode_preview, run_request, progress_reporter

log = logging.getLogger(__name__)

INSTALL_HINT = "the Ray executor needs the cluster extra: pip install -e '.[cluster]'"
POLL_S = 0.05  # how often a waiting node looks at its cancel flag
CALL_TIMEOUT_S = 600.0  # a model scan of a large folder (the worker imports torch first)
DESCRIBE_TIMEOUT_S = 2.0
START_TIMEOUT_S = 300.0  # Ray starts a worker process per actor (a machine of a cluster may be slow to join)
# A local Ray's shared memory: PNGs, previews and the odd latents cross it (models stay in the workers).
LOCAL_OBJECT_STORE_BYTES = 512 * 2**20
CONTROL = "control"  # the actors' concurrency group for cancels and questions while a node runs


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return ray


def parse_address(address: str) -> tuple[str | None, int | None]:
    """"local" -> (None, None), "local:3" -> (None, 3), "ray://host:10001" -> (that, None)."""
    address = address.strip()
    if address.startswith("ray://") and len(address) > len("ray://"):
        return address, None
    kind, _, count = address.partition(":")
    if kind == "local" and (not count or (count.isdigit() and int(count) > 0)):
        return None, int(count) if count else None
    raise ValueError(f"unknown cluster '{address}': use local, local:N (N workers) or ray://HOST:PORT")


# --- the worker (a Ray actor) ------------------------------------------------------------------


class _ShippedImages(DiskImageStore):
    """A worker's own image folder, for a worker that cannot reach the app's: it remembers what the
    running node saved, to send back."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.saved: list[str] = []

    def save(self, image: Any, **kwargs: Any) -> Any:
        field = super().save(image, **kwargs)
        self.saved.append(field.image_name)
        return field


class NodeWorker:
    """One Ray actor: runs one node at a time (its default concurrency group) with its own stores
    and models; cancels and questions arrive on the CONTROL group meanwhile."""

    def __init__(self, settings: Settings, marker: tuple[str, str] | None) -> None:
        from services.container import Services
        from nodes.discovery import load_all_nodes

        load_all_nodes(settings.plugins_dir)
        self.services = Services.local(settings)
        self.warming = warm_up(self.services)
        self.configure(settings, marker)
        self.cancels: dict[int, threading.Event] = {}
        self.running: dict[str, Any] | None = None
        self.nodes_run = 0

    def configure(self, settings: Settings, marker: tuple[str, str] | None) -> None:
        """marker: (path, text) of a file in the app's outputs folder; None to ship every image."""
        try:
            self.shared = marker is not None and Path(marker[0]).read_text() == marker[1]
        except OSError:
            self.shared = False
        services = self.services
        services.settings = settings
        services.images = (DiskImageStore(settings.outputs_dir) if self.shared
                           else _ShippedImages(Path(tempfile.mkdtemp(prefix="invoke-nodes-worker-"))))
        services.executor.settings_changed()  # a new model manager reads the new folders

    def run(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Run one node; yields its progress messages, then its reply (a Ray streaming generator)."""
        import ray

        self.warming.join()  # a node importing diffusers beside the warm-up thread breaks diffusers' imports
        images = self.services.images
        for name, ref in request["images"].items():
            if not images.exists(name):
                images.put_png(name, ray.get(ref))
        for name, value in request["objects"].items():  # made on another worker
            self.services.objects.adopt(name, value)
        if isinstance(images, _ShippedImages):
            images.saved.clear()
        messages: queue.SimpleQueue[tuple[dict[str, Any], Any]] = queue.SimpleQueue()  # (message, preview image)
        cancel = self.cancels[request["id"]] = threading.Event()
        self.running = {key: request[key] for key in ("session_id", "node_id", "type")}

        def work() -> None:
            reply = run_request(self.services, request, lambda: request["graph"],
                                progress_reporter(lambda message, preview: messages.put((message, preview)),
                                                   request["id"]), cancel)
            if reply["op"] == "done" and isinstance(images, _ShippedImages):
                reply["images"] = {name: images.path(name).read_bytes() for name in images.saved}
            messages.put((reply, None))

        # The node runs on its own thread, so that this generator streams its progress (and encodes
        # its previews) meanwhile.
        threading.Thread(target=work, name="node", daemon=True).start()
        try:
            while True:
                message, preview = messages.get()
                if preview is not None:
                    message["preview"] = encode_preview(preview)
                if message["op"] != "progress":
                    break
                yield message
        finally:
            self.cancels.pop(request["id"], None)
            self.running = None
        # counted before the reply goes out: whoever has the reply may ask for the count at once
        self.nodes_run += 1
        yield message

    def cancel(self, request_id: int) -> None:
        event = self.cancels.get(request_id)
        if event is not None:
            event.set()

    def describe(self) -> dict[str, Any]:
        import ray

        stats = self.services.models.cache_stats()
        gpus = ray.get_gpu_ids()
        return {"node": ray.util.get_node_ip_address(), "pid": os.getpid(),
                "device": f"GPU {','.join(str(g) for g in gpus)}" if gpus else "CPU",
                "models": stats.ids_on_gpu + stats.ids_in_ram, "load_s": self.services.models.load_seconds,
                "running": self.running, "nodes_run": self.nodes_run, "warm": not self.warming.is_alive(),
                "shared_outputs": self.shared}

    def list_models(self, kind: str | None) -> list[ModelInfo]:
        return self.services.models.list(kind)

    def unrecognized_models(self) -> list[UnrecognizedFile]:
        return self.services.models.unrecognized()

    def export_objects(self, names: list[str]) -> dict[str, Any]:
        return {name: self.services.objects.get(name) for name in names}

    def objects_held(self, names: list[str]) -> list[str]:
        return [name for name in names if self.services.objects.exists(name)]


# --- the app's side ------------------------------------------------------------------------------


class WorkerLost(Exception):
    """A worker's process (or machine) went away while it ran a node."""


@dataclasses.dataclass(eq=False)
class _Slot:
    number: int
    actor: Any
    busy: bool = False
    models: set[str] = dataclasses.field(default_factory=set)  # what it loaded last (a hint)
    lost: int = 0


class ClusterExecutor(Executor):
    def __init__(self, settings: Settings, local: InProcessExecutor, address: str | None = None,
                 ship_images: bool = False) -> None:
        """address: as `settings.cluster` (default "local"); ship_images: move every image through
        Ray's object store even where the workers could read the outputs folder."""
        self.ray = ray = import_ray()
        self.settings = settings
        self.local = local
        self.ship_images = ship_images
        remote, count = parse_address(address or settings.cluster or "local")
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            if remote is not None:
                ray.init(address=remote, logging_level=logging.WARNING)
            else:
                ray.init(address="local", num_cpus=max(count or 0, os.cpu_count() or 1), include_dashboard=False,
                         object_store_memory=LOCAL_OBJECT_STORE_BYTES, logging_level=logging.WARNING)
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        count = count or gpus or cpus
        self.parallelism = count
        # One GPU per worker; more workers than GPUs share them (Ray gives each a fraction).
        placement = {"num_gpus": min(1.0, gpus / count), "num_cpus": min(1.0, cpus / count)} if gpus else \
            {"num_cpus": min(1.0, cpus / count)}
        self._marker = Path(settings.outputs_dir) / f".cluster-{uuid.uuid4().hex}"
        self._marker.write_text(uuid.uuid4().hex)
        actor_class = ray.remote(concurrency_groups={CONTROL: 4})(NodeWorker).options(
            max_restarts=-1, max_task_retries=0, **placement)
        self._slots = [_Slot(number, actor_class.remote(settings, self._marker_for_workers()))
                       for number in range(count)]
        self._free = threading.Condition()
        self._ids = itertools.count(1)
        self._objects: dict[str, _Slot] = {}  # latents and conditioning: which worker holds each
        self._requests: dict[int, tuple[str, _Slot]] = {}  # running nodes: request id -> (session id, worker)
        self._lost_errors = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
        try:
            ray.get([slot.actor.describe.options(concurrency_group=CONTROL).remote() for slot in self._slots],
                    timeout=START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            self.shutdown()
            raise ConnectionError(f"{count} Ray workers did not start within {START_TIMEOUT_S:.0f} s on a cluster "
                                  f"of {gpus} GPUs and {cpus} CPUs") from None
        log.info("Ray executor: %d workers (%s)", count, placement)

    def _marker_for_workers(self) -> tuple[str, str] | None:
        return None if self.ship_images else (str(self._marker), self._marker.read_text())

    def _ask(self, slot: _Slot, method: str, *args: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        return self.ray.get(getattr(slot.actor, method).options(concurrency_group=CONTROL).remote(*args), timeout=timeout)

    # --- running nodes ---------------------------------------------------------------------------

    def execute(self, call: NodeCall, report: ProgressReport, cancel: threading.Event) -> list[dict[str, Any]]:
        cls = type(call.invocation)
        if not cls.runs_in_worker:
            return self.local.execute(call, report, cancel)
        values = call.invocation.model_dump(mode="json")
        refs = _references(values)
        request = {"type": cls.node_type, "module": cls.__module__, "values": values, "session_id": call.session_id,
                   "node_id": call.node_id, "index": call.index, "graph": call.graph(),
                   "images": {name: self.ray.put(self.local.services.images.path(name).read_bytes())
                              for name in refs["images"]}}
        models = refs["models"] | {values[name] for name, port in cls.inputs().items()
                                   if port.kind == "model" and values.get(name)}
        what = f"node '{call.node_id}' ({cls.node_type})"
        first: tuple[_Slot, str] | None = None
        while True:
            holders = self._holders(refs["objects"], what)
            slot = self._checkout(models, set(holders.values()), cancel, avoid=first[0] if first else None)
            try:
                objects = self._fetch(holders, slot, what)
                return self._run_on(slot, {**request, "id": next(self._ids), "objects": objects}, models, report, cancel)
            except WorkerLost as exc:
                slot.lost += 1
                slot.models.clear()
                self._forget(slot)
                if first is not None:
                    raise NodeFailedError(f"Ray worker {first[0].number} stopped ({first[1]}) while running {what}, "
                                          f"and worker {slot.number}, which ran it again, stopped too ({exc})") from None
                first = (slot, str(exc))
                log.warning("Ray worker %d stopped (%s) while running %s: running it again", slot.number, exc, what)
            finally:
                self._checkin(slot)

    def _holders(self, objects: set[str], what: str) -> dict[str, _Slot]:
        """Which worker holds each object (latents, conditioning) a node reads."""
        holders = {name: self._objects.get(name) for name in objects}
        lost = sorted(name for name, holder in holders.items() if holder is None)
        if lost:
            raise NodeFailedError(f"{what} reads {', '.join(lost)}, which no Ray worker holds any more (the worker "
                                  "that made it stopped); run the session again")
        return holders  # type: ignore[return-value]

    def _fetch(self, holders: dict[str, _Slot], slot: _Slot, what: str) -> dict[str, Any]:
        """The objects a node reads that another worker holds, copied from it (through Ray's object store)."""
        wanted: dict[_Slot, list[str]] = {}
        for name, holder in holders.items():
            if holder is not slot:
                wanted.setdefault(holder, []).append(name)
        objects: dict[str, Any] = {}
        for holder, names in wanted.items():
            try:
                objects |= self._ask(holder, "export_objects", names)
            except self._lost_errors as exc:
                self._forget(holder)
                raise NodeFailedError(f"{what} reads {', '.join(names)}, held by Ray worker {holder.number}, which "
                                      f"stopped ({_first_line(exc)}); run the session again") from None
        return objects

    def _forget(self, slot: _Slot) -> None:
        """A lost worker's objects are gone with it."""
        for name, holder in list(self._objects.items()):
            if holder is slot:
                del self._objects[name]

    def _checkout(self, models: set[str], holders: set[_Slot], cancel: threading.Event,
                  avoid: _Slot | None) -> _Slot:
        """A free worker, preferring one that holds the node's objects, then its models; waits while all are busy."""
        candidates = [s for s in self._slots if s is not avoid] or self._slots
        with self._free:
            while True:
                free = [s for s in candidates if not s.busy]
                if free:
                    slot = max(free, key=lambda s: (s in holders, len(models & s.models)))
                    slot.busy = True
                    return slot
                if cancel.is_set():
                    raise CanceledError()
                self._free.wait(POLL_S)

    def _checkin(self, slot: _Slot) -> None:
        with self._free:
            slot.busy = False
            self._free.notify()

    def _run_on(self, slot: _Slot, request: dict[str, Any], models: set[str], report: ProgressReport,
                cancel: threading.Event) -> list[dict[str, Any]]:
        ray = self.ray
        stream = slot.actor.run.options(num_returns="streaming").remote(request)
        self._requests[request["id"]] = (request["session_id"], slot)
        cancel_sent = False  # cancel() sends it at once; this covers a cancel from before the node started
        try:
            while True:
                if cancel.is_set() and not cancel_sent:
                    slot.actor.cancel.options(concurrency_group=CONTROL).remote(request["id"])
                    cancel_sent = True
                ready, _ = ray.wait([stream], timeout=POLL_S)
                if not ready:
                    continue
                try:
                    message = ray.get(next(stream))
                except StopIteration:
                    raise WorkerLost("it ended the node without a reply") from None
                op = message["op"]
                if op == "progress":
                    report(message["step"], message["total"], message["message"], decode_preview(message.get("preview")))
                elif op == "done":
                    slot.models = models
                    for name in [*_references(message["outputs"])["objects"], *request["objects"]]:
                        self._objects[name] = slot
                    for name, data in message.get("images", {}).items():
                        self.local.services.images.put_png(name, data)
                    return message["outputs"]
                else:
                    raise_reply(message)
        except self._lost_errors as exc:
            raise WorkerLost(_first_line(exc)) from None
        finally:
            self._requests.pop(request["id"], None)

    def cancel(self, session_id: str) -> None:
        for request_id, (owner, slot) in list(self._requests.items()):
            if owner == session_id:
                slot.actor.cancel.options(concurrency_group=CONTROL).remote(request_id)
        with self._free:
            self._free.notify_all()  # nodes of the session waiting for a free worker give up now

    # --- questions for where the models are -----------------------------------------------------

    def _ask_any(self, method: str, *args: Any) -> Any:
        """Ask the workers in turn until one answers (a lost one is being restarted)."""
        error: Exception | None = None
        for slot in sorted(self._slots, key=lambda s: s.busy):
            try:
                return self._ask(slot, method, *args)
            except self._lost_errors as exc:
                error = exc
        raise NodeFailedError(f"no Ray worker answered '{method}': {_first_line(error)}")

    def list_models(self, kind: str | None = None) -> list[ModelInfo]:
        return self._ask_any("list_models", kind)

    def unrecognized_models(self) -> list[UnrecognizedFile]:
        return self._ask_any("unrecognized_models")

    def objects_exist(self, names: list[str]) -> bool:
        held: set[str] = set()
        for slot in self._slots:
            try:
                held.update(self._ask(slot, "objects_held", names, timeout=DESCRIBE_TIMEOUT_S))
            except (*self._lost_errors, self.ray.exceptions.GetTimeoutError):
                continue  # objects of a lost worker are gone
        return held.issuperset(names)

    def workers(self) -> list[dict[str, Any]]:
        described = []
        for slot in self._slots:
            entry: dict[str, Any] = {"id": slot.number, "restarts": slot.lost}
            try:
                entry |= self._ask(slot, "describe", timeout=DESCRIBE_TIMEOUT_S)
                entry["state"] = "busy" if entry["running"] else "idle"
            except (*self._lost_errors, self.ray.exceptions.GetTimeoutError) as exc:
                entry |= {"state": "unavailable", "error": _first_line(exc)}
            described.append(entry)
        return described

    def settings_changed(self) -> None:
        self.local.settings_changed()
        self._marker.unlink(missing_ok=True)
        self._marker = Path(self.settings.outputs_dir) / self._marker.name
        self._marker.write_text(uuid.uuid4().hex)
        for slot in self._slots:
            try:
                self._ask(slot, "configure", self.settings, self._marker_for_workers())
            except self._lost_errors as exc:
                log.warning("Ray worker %d did not take the new settings: %s", slot.number, _first_line(exc))

    def shutdown(self) -> None:
        slots, self._slots = self._slots, []
        for slot in slots:
            self.ray.kill(slot.actor, no_restart=True)
        self._marker.unlink(missing_ok=True)
        if self._started_ray:
            self.ray.shutdown()


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else type(exc).__name__
    return text[:300]


def _references(value: Any) -> dict[str, set[str]]:
    """What JSON values (a node's inputs or outputs) name, by where it is held: "images" (the image
    store), "objects" (a worker's object store) and "models" (model ids), read from PIN_TYPES."""
    found: dict[str, set[str]] = {"images": set(), "objects": set(), "models": set()}

    def walk(item: Any) -> None:
        if isinstance(item, dict):
            for pin in PIN_TYPES.values():
                if isinstance(item.get(pin.key), str):
                    found[pin.store or "models"].add(item[pin.key])
            for inner in item.values():
                walk(inner)
        elif isinstance(item, list):
            for inner in item:
                walk(inner)

    walk(value)
    return found

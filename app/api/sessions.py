"""Session routes: create, list, get, append a node, fork with one change, invoke, cancel, delete.

Handlers are plain functions (FastAPI runs them on its thread pool) because they touch disk;
appending a node is the exception (see append_node).
Every change goes through the engine, which validates before it changes anything, so a refused
request leaves the session as it was.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Depends, File, Query, Request, UploadFile, status
from fastapi.concurrency import run_in_threadpool

from services.engine.graph import Link
from services.engine.session import Session
from services.stores.sessions import SessionNotFoundError

from .errors import ApiError
from .schemas import (AddLink, AppendNode, Canceled, DeleteLink, DeleteNode, Deleted, ForkChange, GraphModel,
                      ImportedSession, NodeAdded, Queued, SessionId, SessionModel, SessionPage, SessionSummary, SetValue)

router = APIRouter(prefix="/api/v1/sessions", tags=["sessions"])

DELETE_WAIT_S = 5.0  # how long DELETE waits for a canceled run to stop before answering 409


# async: FastAPI would run a plain function dependency on its thread pool, one hop per request each.
async def get_invoker(request: Request) -> Any:
    return request.app.state.invoker


async def get_writer(request: Request) -> Any:
    return request.app.state.writer


def session_from_path(session_id: SessionId, request: Request) -> Session:
    """The live session object, also when only the journal holds its latest appends."""
    return request.app.state.writer.get(session_id)


def session_model(invoker: Any, session: Session) -> dict[str, Any]:
    data = session.to_dict()
    data["states"] = {node_id: session.node_state(node_id) for node_id in session.graph.order}
    data["busy"] = invoker.is_busy(session.id)
    return data


@router.post("/", status_code=status.HTTP_201_CREATED, response_model=SessionModel,
             summary="Create a session, empty or from a whole graph")
@router.post("", status_code=status.HTTP_201_CREATED, response_model=SessionModel, include_in_schema=False)
def create_session(graph: GraphModel | None = Body(None), invoker: Any = Depends(get_invoker)) -> dict[str, Any]:
    session = invoker.create_session(graph.model_dump() if graph is not None else None)
    return session_model(invoker, session)


@router.post("/import", status_code=status.HTTP_201_CREATED, response_model=ImportedSession,
             summary="Import a ComfyUI / AUTOMATIC1111 / InvokeAI workflow or PNG (multipart field `file`) as a new "
                     "session, with the report of what was mapped and which models were found")
def import_session(file: UploadFile = File(...),
                   format: str | None = Query(None, description="Force a format: comfyui, a1111 or invokeai"),
                   invoker: Any = Depends(get_invoker)) -> dict[str, Any]:
    from services.importers import ImportFormatError

    name = Path(file.filename or "upload").name  # a name only: the server's folders are not searched
    try:
        session, report = invoker.import_graph(file.file.read(), name, format)
    except ImportFormatError as exc:
        raise ApiError(400, "import_failed", str(exc), field="file") from None
    return {"session": session_model(invoker, session), "report": report.to_dict()}


@router.get("/", response_model=SessionPage, summary="List sessions, newest first")
@router.get("", response_model=SessionPage, include_in_schema=False)  # answered here, not with a 307 to "/"
def list_sessions(request: Request, offset: int = Query(0, ge=0, le=1_000_000), limit: int = Query(50, ge=1, le=200),
                  invoker: Any = Depends(get_invoker)) -> dict[str, Any]:
    ids = invoker.list_sessions(offset, limit + 1)  # one more than asked tells whether another page exists
    items = []
    for session_id in ids[:limit]:
        try:
            # read_session: listing must not push the sessions in use out of the invoker's cache.
            session = request.app.state.writer.pending(session_id) or invoker.read_session(session_id)
        except (SessionNotFoundError, ValueError) as exc:  # deleted meanwhile, or a corrupt file
            items.append({"id": session_id, "error": str(exc)})
            continue
        items.append({"id": session.id, "parent_id": session.parent_id, "change": session.change,
                      "created": session.created, "nodes": len(session.graph)})
    return {"items": [SessionSummary(**item) for item in items], "offset": offset, "limit": limit,
            "has_more": len(ids) > limit}


@router.get("/{session_id}", response_model=SessionModel, summary="Get a session: graph, results, history")
def get_session(session: Session = Depends(session_from_path), invoker: Any = Depends(get_invoker)) -> dict[str, Any]:
    return session_model(invoker, session)


@router.post("/{session_id}/nodes", status_code=status.HTTP_201_CREATED, response_model=NodeAdded,
             summary="Append a node with links into it (history links like -1 and `*` allowed)")
async def append_node(session_id: SessionId, body: AppendNode, writer: Any = Depends(get_writer)) -> dict[str, Any]:
    # async, unlike the other routes: the answer waits for the disk, and on top of that the two
    # thread-pool hops (dependency, handler) cut a single client to ~0.6x the appends/s of the
    # old answer-first saving here.  A session not in memory (rare: between checkpoints it is)
    # is read on the thread pool.
    session = writer.pending(session_id) or await run_in_threadpool(writer.get, session_id)
    links = [link.model_dump(exclude_none=True) for link in body.links]
    node = await writer.append(session, body.node, links)
    return {"session_id": session.id, "node": node.to_dict(),
            "links": [link.to_dict() for link in session.graph.links_in[node.id]]}


@router.post("/{session_id}/fork", status_code=status.HTTP_201_CREATED, response_model=SessionModel,
             summary="A new session with one change (sessions themselves only grow)")
def fork_session(change: ForkChange, session: Session = Depends(session_from_path),
                 invoker: Any = Depends(get_invoker)) -> dict[str, Any]:
    if isinstance(change, SetValue):
        forked = session.set_value(change.node_id, change.field, change.value)
    elif isinstance(change, DeleteNode):
        forked = session.delete_node(change.node_id)
    elif isinstance(change, AddLink):
        forked = session.add_link(Link(**change.link.model_dump()))
    else:
        assert isinstance(change, DeleteLink)
        forked = session.delete_link(Link(**change.link.model_dump()))
    return session_model(invoker, invoker.add_session(forked))


@router.put("/{session_id}/invoke", status_code=status.HTTP_202_ACCEPTED, response_model=Queued,
            summary="Queue a run: every ready node (all=true) or the next one; events follow on the socket")
def invoke_session(all: bool = Query(True, description="Run every node, not only the next one"),
                   session: Session = Depends(session_from_path), invoker: Any = Depends(get_invoker)) -> dict[str, Any]:
    invoker.invoke(session, run_all=all)
    return {"session_id": session.id, "run_all": all}


@router.delete("/{session_id}/invoke", status_code=status.HTTP_202_ACCEPTED, response_model=Canceled,
               summary="Cancel a session's queued and running work")
def cancel_session(session: Session = Depends(session_from_path), invoker: Any = Depends(get_invoker)) -> dict[str, Any]:
    invoker.cancel(session.id)
    return {"session_id": session.id}


@router.delete("/{session_id}", response_model=Deleted, summary="Delete a session (a running one is canceled first)")
def delete_session(session: Session = Depends(session_from_path), invoker: Any = Depends(get_invoker),
                   writer: Any = Depends(get_writer)) -> dict[str, Any]:
    if invoker.is_busy(session.id):
        invoker.cancel(session.id)
        if not invoker.wait(session.id, DELETE_WAIT_S):
            raise ApiError(409, "session_busy", f"session {session.id!r} is still running; try again")
    writer.forget(session.id)
    invoker.delete_session(session.id)
    return {"deleted": session.id}

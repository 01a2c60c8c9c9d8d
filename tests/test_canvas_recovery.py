"""Canvas crash recovery without a window: what the recovery file keeps and what a restart brings
back (the window test kills a real canvas process; see test_canvas_window.py)."""
from __future__ import annotations

import json

from app.canvas import recovery as recovery_module
from app.canvas.controller import CanvasController
from app.canvas.recovery import Recovery
from services.config import Settings
from services.container import Services
from services.engine.graph import Link
from services.invoker import Invoker


def snapshot(c: CanvasController) -> dict:
    graph = c.graph.to_dict()
    return {"graph": graph, "positions": c.session.ui.get("positions"), "randomize": c.session.ui.get("randomize"),
            "path": c.path, "undo": [s.label for s in c.undo_stack], "redo": [s.label for s in c.redo_stack]}


def edit(c: CanvasController, tmp_path) -> None:
    c.new_demo()
    c.save(tmp_path / "work.json")
    c.set_value("blend", "alpha", 0.25)
    number = c.add_node("integer", (620, 480), {"value": 48})
    assert c.connect(number, "value", "color", "height")
    c.move({"show": (900, 320), number: (640, 500)})
    c.set_randomize("noise", "seed", True)
    c.delete(["size"])
    c.undo()  # one step on the redo stack too


def test_a_restart_restores_values_links_positions_and_undo_history(user_root, tmp_path, monkeypatch):
    first = Invoker(Services.local(Settings.load()))
    c = CanvasController(first)
    rec = Recovery(user_root / "recovery")
    assert rec.find() is None
    rec.attach(c)
    edit(c, tmp_path)
    assert not rec.path.exists()  # written a moment after the edits, not during them
    monkeypatch.setattr(recovery_module, "DELAY_S", 0.0)
    rec.tick()
    before = snapshot(c)
    history = []  # the graphs undo walks through
    c.close()
    first.shutdown()  # no clean quit: the file stays, as after a kill

    second = Invoker(Services.local(Settings.load()))
    try:
        c2 = CanvasController(second)
        c2.new_demo()
        rec2 = Recovery(user_root / "recovery")
        found = rec2.find()
        assert found is not None
        text = found.describe()
        assert "work.json" in text and "6 nodes, 6 links" in text and "last change: move" in text
        rec2.attach(c2)
        rec2.restore(found)
        assert snapshot(c2) == before and c2.dirty
        number = next(n for n, node in c2.graph.nodes.items() if node.type == "integer" and node.values["value"] == 48)
        assert c2.value("blend", "alpha") == 0.25 and Link(number, "value", "color", "height") in c2.graph.links
        while c2.undo_stack:  # the whole history comes back: undo to the demo graph
            history.append(c2.graph.to_dict())
            c2.undo()
        assert sorted(c2.graph.nodes) == ["blend", "color", "noise", "show", "size"] and c2.value("blend", "alpha") == 0.55
        assert c2.session.ui["positions"]["show"] != [900.0, 320.0]  # the move was undone too
        for _ in history:
            c2.redo()
        assert c2.graph.to_dict() == history[0]
        assert c2.redo() and "size" not in c2.graph.nodes and not c2.redo_stack  # and the step undone before the crash
        assert rec2.path.exists()
        assert c2.save()  # saved: nothing to recover any more
        assert not rec2.path.exists()
        c2.close()
    finally:
        second.shutdown()


def test_an_unreadable_recovery_file_is_set_aside(user_root):
    folder = user_root / "recovery"
    folder.mkdir(parents=True)
    (folder / "canvas.json").write_text('{"format": "invoke-nodes/canvas-recovery", "session": {"graph"')
    assert Recovery(folder).find() is None
    assert (folder / "canvas.json.bad").exists() and not (folder / "canvas.json").exists()


def test_a_failing_recovery_write_is_reported_and_the_old_file_kept(invoker, monkeypatch, user_root):
    c = CanvasController(invoker)
    rec = Recovery(user_root / "recovery")
    rec.attach(c)
    c.new_demo()
    c.set_value("blend", "alpha", 0.3)
    rec.write()
    kept = rec.path.read_bytes()

    def full_disk(fd, data):
        raise OSError(28, "No space left on device")

    c.set_value("blend", "alpha", 0.4)
    monkeypatch.setattr("services.fsutil.os.write", full_disk)
    rec.write()
    monkeypatch.undo()
    assert c.message_is_error and "No space left on device" in c.message and "recovery file" in c.message
    assert rec.path.read_bytes() == kept and json.loads(kept)["session"]["graph"]["nodes"]
    assert [p.name for p in rec.path.parent.iterdir()] == ["canvas.json"]  # no temporary file left
    c.close()


def test_groups_bypass_and_a_group_move_are_recovered(user_root, monkeypatch):
    first = Invoker(Services.local(Settings.load()))
    c = CanvasController(first)
    rec = Recovery(user_root / "recovery")
    rec.attach(c)
    c.new_demo()
    index = c.add_group(["noise", "color"], "inputs")
    rect = list(c.groups[index]["rect"])
    assert c.move_group(index, 100, 40) and c.set_bypass(["blend"], True)
    monkeypatch.setattr(recovery_module, "DELAY_S", 0.0)
    rec.tick()
    c.close()
    first.shutdown()  # no clean quit

    second = Invoker(Services.local(Settings.load()))
    try:
        c2 = CanvasController(second)
        rec2 = Recovery(user_root / "recovery")
        rec2.attach(c2)
        rec2.restore(rec2.find())
        assert c2.groups[0]["title"] == "inputs" and c2.bypassed("blend")
        assert c2.undo() and not c2.bypassed("blend")
        assert c2.undo() and c2.groups[0]["rect"] == rect  # the group's own move is in the history
        c2.close()
    finally:
        second.shutdown()

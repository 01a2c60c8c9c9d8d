"""The desktop canvas: a Dear PyGui node editor over the engine.

`controller` (pure Python, unit-tested without a window) owns the graph being edited, undo/redo,
node states and previews; `view` draws it with Dear PyGui and forwards gestures; `schema` turns
a node's ports into pin colours and widget specs, so a new node type needs no canvas code.
"""

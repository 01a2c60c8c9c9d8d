"""The Dear PyGui view: draws what the controller holds and forwards gestures to it.

Rules that keep it safe and cheap:
- callbacks are queued by Dear PyGui (manual callback management) and run in `frame()`, on the
  same thread that drains the engine's events, so no Dear PyGui call ever comes from a worker;
- the graph is re-synced only when the controller's revision changes, and only nodes whose
  values, links or position differ are touched; a progress event redraws only its node;
- a node is deleted after its links (Dear PyGui 2.3 crashes deleting a node with links).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dearpygui.dearpygui as dpg

from app.examples import examples
from services.engine.graph import Link

from .controller import IDLE, CanvasController, CanvasError
from .recovery import Found, Recovery
from .schema import NONE_CHOICE, PinSpec, WidgetSpec, coerce, tag_colour
from .thumbs import THUMB, VIEWER, image_rgba

WIDGET_WIDTH = 140
PALETTE_WIDTH = 230
LOG_HEIGHT = 110
LOG_LINES = 200
NO_MODELS = "(no models found: see Settings)"
ITEM_SPACING = 8  # Dear ImGui's default horizontal item spacing (the style is not changed)

STATE_COLOURS = {  # title bar colour per node state
    IDLE: (60, 60, 70), "queued": (90, 90, 40), "running": (40, 110, 170), "completed": (40, 120, 60),
    "cached": (50, 100, 90), "failed": (160, 45, 45), "skipped": (110, 80, 40), "canceled": (100, 70, 40),
    "stale": (100, 75, 125),
}
STATE_TEXT = {IDLE: "idle", "queued": "queued", "running": "running", "completed": "done", "cached": "cached",
              "failed": "failed", "skipped": "skipped", "canceled": "canceled",
              "stale": "stale - will re-run"}  # the default font has no em dash
# Widgets whose every keystroke or +/- click fires a callback commit only when the user is done
# with them (one fork, one undo step); checkboxes and combos commit at once.
COMMIT_WHEN_DONE = {"int", "float", "text", "multiline", "path", "seed"}


@dataclass
class InputItems:
    attr: int
    label: int
    widget: int | None
    spec: WidgetSpec
    extra: int | None = None  # the seed's randomize checkbox


@dataclass
class NodeItems:
    node: int
    node_type: str
    inputs: dict[str, InputItems] = field(default_factory=dict)
    outputs: dict[str, int] = field(default_factory=dict)
    state_text: int = 0
    error_tip: int = 0
    progress: int = 0
    static: int = 0
    image: int | None = None
    texture: int | None = None
    state: str | None = None
    snapshot: tuple = ()  # (values, linked, position, models_version) last drawn


class CanvasView:
    def __init__(self, controller: CanvasController, *, width: int = 1400, height: int = 860, vsync: bool = True,
                 recovery: Recovery | None = None) -> None:
        self.c = controller
        self.recovery = recovery  # autosaves the work a moment after each edit (see recovery.py)
        self.found: Found | None = None  # recovered work offered at start, not answered yet
        self.size = (width, height)
        self.vsync = vsync  # off only to measure frame times (on, an idle canvas does not spin a core)
        self.nodes: dict[str, NodeItems] = {}
        self.pins: dict[int, tuple[str, str, bool]] = {}  # attribute -> (node id, field, is output)
        self.widget_field: dict[int, tuple[str, str, WidgetSpec]] = {}
        self.text_numbers: set[int] = set()  # numbers typed as text: beyond 32 bits, or optional (empty = unset)
        self._shown: dict[int, Any] = {}  # last value written to each status-bar item
        self.links: dict[Link, int] = {}
        self.link_of: dict[int, Link] = {}
        self.drawn_revision = -1
        self.log_seen = 0
        self.pending_edits: dict[int, tuple[str, str, WidgetSpec]] = {}  # widgets being typed into
        self.context_pos = (0.0, 0.0)
        self.context_node: str | None = None
        self.pending: Callable[[], None] | None = None  # what to do after the unsaved-changes prompt
        self.dialog_purpose: tuple[str, Any] = ("", None)
        self.viewer_image: str | None = None
        self.frames = 0
        self.running = False
        self._themes: dict[Any, int] = {}

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        dpg.create_context()
        dpg.configure_app(manual_callback_management=True)
        dpg.create_viewport(title="invoke-nodes", width=self.size[0], height=self.size[1], vsync=self.vsync,
                            disable_close=True)  # closing goes through the exit callback: unsaved-changes prompt
        self.textures = dpg.add_texture_registry()
        self._build()
        dpg.set_exit_callback(lambda: self.request(self.stop))
        dpg.setup_dearpygui()
        dpg.show_viewport()
        dpg.set_primary_window(self.window, True)
        self.apply_theme(self.c.settings.theme)
        self.running = True

    def frame(self) -> None:
        """One turn of the render loop: gestures, engine events, redraw, present."""
        dpg.run_callbacks(dpg.get_callback_queue())
        self.c.pump()
        self.refresh()
        if self.recovery is not None:
            self.recovery.tick()
        dpg.render_dearpygui_frame()
        self.frames += 1

    def run(self, max_frames: int | None = None) -> None:
        while self.running and dpg.is_dearpygui_running():
            self.frame()
            if max_frames is not None and self.frames >= max_frames:
                break

    def stop(self) -> None:
        self.running = False

    def destroy(self) -> None:
        dpg.destroy_context()

    def screenshot(self, path: str | Path) -> None:
        """Write the next rendered frame as PNG (Dear PyGui fills it in during a frame)."""
        dpg.output_frame_buffer(file=str(path))
        self.frame()
        self.frame()

    # --- layout ------------------------------------------------------------------------------

    def _build(self) -> None:
        with dpg.window(label="invoke-nodes", no_scrollbar=True) as self.window:
            self._build_menu()
            with dpg.group(horizontal=True):
                self.run_button = dpg.add_button(label="Run  (Ctrl+Enter)", callback=lambda: self.c.run())
                self.cancel_button = dpg.add_button(label="Cancel  (Esc)", callback=lambda: self.c.cancel())
                dpg.add_spacer(width=20)
                self.device_text = dpg.add_text(f"Device: {self.c.device}")
                dpg.add_spacer(width=20)
                self.running_text = dpg.add_text("")
            with dpg.group(horizontal=True):
                with dpg.child_window(width=PALETTE_WIDTH, height=-LOG_HEIGHT - 30) as self.palette_window:
                    dpg.add_text("Nodes")
                    self.search = dpg.add_input_text(hint="search...", width=-1, callback=self._fill_palette)
                    self.palette_list = dpg.add_group()
                # directly in the layout: wrapped in a child window the editor costs ~20% more per frame
                self.editor = dpg.add_node_editor(callback=self._on_link, delink_callback=self._on_delink,
                                                  minimap=True, minimap_location=dpg.mvNodeMiniMap_Location_BottomRight,
                                                  width=-1, height=-LOG_HEIGHT - 30)
            with dpg.child_window(height=LOG_HEIGHT, label="log") as self.log_window:
                pass
            with dpg.group(horizontal=True):
                self.status_text = dpg.add_text("")
                dpg.add_spacer(width=30)
                self.error_text = dpg.add_text("", color=(230, 110, 110))
        self._fill_palette()
        self._build_popups()
        self._build_handlers()
        self.overlays = [self.prompt, self.restore_prompt, self.viewer, self.settings_window, self.file_dialog]

    def _build_menu(self) -> None:
        with dpg.menu_bar():
            with dpg.menu(label="File"):
                dpg.add_menu_item(label="New demo graph", callback=lambda: self.request(self.c.new_demo))
                with dpg.menu(label="Examples"):
                    for item in examples():
                        dpg.add_menu_item(label=item.title, user_data=item.name,
                                          callback=lambda s, a, u: self.request(lambda: self.c.open_example(u)))
                dpg.add_menu_item(label="Open...  (Ctrl+O)", callback=lambda: self.request(self.ask_open))
                dpg.add_menu_item(label="Save  (Ctrl+S)", callback=self.save)
                dpg.add_menu_item(label="Save as...", callback=lambda: self.ask_path("save", None))
                self.recent_menu = dpg.add_menu(label="Recent")
                dpg.add_separator()
                dpg.add_menu_item(label="Settings...", callback=self.show_settings)
                dpg.add_menu_item(label="Quit", callback=lambda: self.request(self.stop))
            with dpg.menu(label="Edit"):
                dpg.add_menu_item(label="Undo  (Ctrl+Z)", callback=lambda: self.c.undo())
                dpg.add_menu_item(label="Redo  (Ctrl+Y)", callback=lambda: self.c.redo())
                dpg.add_menu_item(label="Delete selected  (Del)", callback=self.delete_selected)
            with dpg.menu(label="Run"):
                dpg.add_menu_item(label="Run  (Ctrl+Enter)", callback=lambda: self.c.run())
                dpg.add_menu_item(label="Cancel  (Esc)", callback=lambda: self.c.cancel())
            self.embeddings_menu = dpg.add_menu(label="Embeddings")
            self.embeddings_version = -1  # the models_version the menu was filled from
        self._fill_recent()

    def _fill_recent(self) -> None:
        dpg.delete_item(self.recent_menu, children_only=True)
        for path in self.c.settings.recent_files:
            dpg.add_menu_item(label=path, parent=self.recent_menu, user_data=path,
                              callback=lambda s, a, u: self.request(lambda: self.c.open(u)))
        if not self.c.settings.recent_files:
            dpg.add_menu_item(label="(none yet)", parent=self.recent_menu, enabled=False)

    def _fill_palette(self, *_: Any) -> None:
        """The palette lists every registered node type by category (search filters it)."""
        self._fill_node_list(self.palette_list, dpg.get_value(self.search), lambda t: self.add_at_center(t))

    def _fill_node_list(self, parent: int, search: str, on_pick: Callable[[str], None]) -> None:
        dpg.delete_item(parent, children_only=True)
        groups = self.c.palette(search)
        for category, entries in groups.items():
            with dpg.tree_node(label=category, parent=parent, default_open=bool(search) or len(groups) < 4):
                for entry in entries:
                    item = dpg.add_selectable(label=entry["title"], user_data=entry["type"],
                                              callback=lambda s, a, u: (dpg.set_value(s, False), on_pick(u)))
                    with dpg.tooltip(item):
                        dpg.add_text(f"{entry['type']}: {entry['description']}", wrap=320)

    def _build_popups(self) -> None:
        with dpg.window(label="Add node", show=False, popup=True, width=260, height=360) as self.add_menu:
            self.add_search = dpg.add_input_text(hint="search...", width=-1,
                                                 callback=lambda: self._fill_add_menu())
            self.add_list = dpg.add_group()
        with dpg.window(label="Node", show=False, popup=True, width=160) as self.node_menu:
            dpg.add_selectable(label="Delete node  (Del)", callback=self._delete_context_node)
            dpg.add_selectable(label="Open image", callback=lambda: self.open_viewer(self.context_node))
        with dpg.window(label="Unsaved changes", show=False, modal=True, no_resize=True, width=360) as self.prompt:
            dpg.add_text("The graph has unsaved changes.")
            with dpg.group(horizontal=True):
                dpg.add_button(label="Save", callback=self._prompt_save)
                dpg.add_button(label="Discard", callback=self._prompt_discard)
                dpg.add_button(label="Cancel", callback=self._prompt_cancel)
        with dpg.window(label="Restore unsaved changes?", show=False, modal=True, no_resize=True,
                        width=560) as self.restore_prompt:
            self.restore_text = dpg.add_text("", wrap=540)
            with dpg.group(horizontal=True):
                dpg.add_button(label="Restore", callback=self._restore)
                dpg.add_button(label="Discard", callback=self._discard_recovered)
        with dpg.window(label="Image", show=False, width=VIEWER + 30, height=VIEWER + 80) as self.viewer:
            dpg.add_button(label="Save as...", callback=lambda: self.ask_path("image", None))
            self.viewer_group = dpg.add_group()
        with dpg.window(label="Settings", show=False, width=520, height=170) as self.settings_window:
            self.models_input = dpg.add_input_text(label="models folder", width=380)
            self.outputs_input = dpg.add_input_text(label="outputs folder", width=380)
            self.theme_combo = dpg.add_combo(["dark", "light"], label="theme", width=120)
            dpg.add_button(label="Save settings", callback=self._save_settings)
        with dpg.file_dialog(show=False, modal=True, width=720, height=440, callback=self._on_file_chosen,
                             cancel_callback=self._prompt_cancel) as self.file_dialog:
            for ext, colour in ((".json", (120, 200, 120)), (".png", (200, 160, 220)), (".*", (200, 200, 200))):
                dpg.add_file_extension(ext, color=colour)

    def _build_handlers(self) -> None:
        with dpg.handler_registry():
            dpg.add_key_press_handler(callback=self._on_key)
            dpg.add_mouse_release_handler(button=dpg.mvMouseButton_Left, callback=self._on_mouse_release)
            dpg.add_mouse_click_handler(button=dpg.mvMouseButton_Right, callback=self._on_right_click)

    # --- themes ------------------------------------------------------------------------------

    def _theme(self, key: Any, colours: dict[int, tuple]) -> int:
        """Themes are made once per key (pin type, state) and shared by every item."""
        theme = self._themes.get(key)
        if theme is None:
            with dpg.theme() as theme:
                with dpg.theme_component(dpg.mvAll):
                    for target, colour in colours.items():
                        dpg.add_theme_color(target, colour, category=dpg.mvThemeCat_Nodes)
            self._themes[key] = theme
        return theme

    def pin_theme(self, pin: PinSpec) -> int:
        bright = tuple(min(255, v + 50) for v in pin.colour)
        return self._theme(("pin", pin.colour), {dpg.mvNodeCol_Pin: pin.colour, dpg.mvNodeCol_PinHovered: bright})

    def link_theme(self, colour: tuple) -> int:
        bright = tuple(min(255, v + 60) for v in colour)
        return self._theme(("link", colour), {dpg.mvNodeCol_Link: colour, dpg.mvNodeCol_LinkHovered: bright,
                                              dpg.mvNodeCol_LinkSelected: bright})

    def state_theme(self, state: str) -> int:
        colour = STATE_COLOURS.get(state, STATE_COLOURS[IDLE])
        bright = tuple(min(255, v + 35) for v in colour)
        return self._theme(("state", state), {dpg.mvNodeCol_TitleBar: colour, dpg.mvNodeCol_TitleBarHovered: bright,
                                              dpg.mvNodeCol_TitleBarSelected: bright})

    def apply_theme(self, name: str) -> None:
        if name != "light":
            dpg.bind_theme(0)
            return
        with dpg.theme() as light:
            with dpg.theme_component(dpg.mvAll):
                for target, colour in ((dpg.mvThemeCol_WindowBg, (235, 235, 238)), (dpg.mvThemeCol_ChildBg, (242, 242, 245)),
                                       (dpg.mvThemeCol_PopupBg, (248, 248, 250)), (dpg.mvThemeCol_Text, (20, 20, 25)),
                                       (dpg.mvThemeCol_FrameBg, (215, 215, 222)), (dpg.mvThemeCol_Button, (200, 205, 220)),
                                       (dpg.mvThemeCol_MenuBarBg, (220, 220, 228)), (dpg.mvThemeCol_Header, (200, 210, 230))):
                    dpg.add_theme_color(target, colour)
                for target, colour in ((dpg.mvNodeCol_GridBackground, (225, 225, 230)), (dpg.mvNodeCol_GridLine, (200, 200, 208)),
                                       (dpg.mvNodeCol_NodeBackground, (248, 248, 250)),
                                       (dpg.mvNodeCol_NodeBackgroundHovered, (252, 252, 252))):
                    dpg.add_theme_color(target, colour, category=dpg.mvThemeCat_Nodes)
        dpg.bind_theme(light)

    # --- drawing the graph -------------------------------------------------------------------

    def refresh(self) -> None:
        """Per frame: re-sync the graph if it changed, redraw changed nodes, status and log."""
        if self.pending_edits:
            self._commit_finished_edits()
        if self.drawn_revision != self.c.revision:
            self.sync()
        for node_id in self.c.take_changed():
            if node_id in self.nodes:
                self.update_status(node_id)
        if self.embeddings_version != self.c.models_version:
            self._fill_embeddings()
        self._update_bars()

    def _fill_embeddings(self) -> None:
        """The embeddings found, as prompts name them; picking one copies that to the clipboard."""
        self.embeddings_version = self.c.models_version
        dpg.delete_item(self.embeddings_menu, children_only=True)
        for name in self.c.embedding_names():
            dpg.add_menu_item(label=f"embedding:{name}", parent=self.embeddings_menu, user_data=f"embedding:{name}",
                              callback=lambda s, a, u: (dpg.set_clipboard_text(u), self.c.say(f"Copied {u}: paste it into a prompt")))
        if not self.c.embedding_names():
            dpg.add_menu_item(label="(none in <models>/embeddings/)", parent=self.embeddings_menu, enabled=False)

    def sync(self) -> None:
        graph = self.c.graph
        for link in [l for l in self.links if l not in set(graph.links)]:
            self._delete_link(link)
        for node_id in [n for n, items in self.nodes.items()
                        if n not in graph.nodes or graph.nodes[n].type != items.node_type]:
            self._delete_node(node_id)
        for node_id in graph.order:
            if node_id not in self.nodes:
                self._build_node(node_id)
            self._sync_node(node_id)
        for link in graph.links:
            if link not in self.links:
                self._draw_link(link)
        self.drawn_revision = self.c.revision

    def _build_node(self, node_id: str) -> None:
        c = self.c
        with dpg.node(parent=self.editor, label=c.title(node_id), pos=c.position(node_id), user_data=node_id) as node:
            items = NodeItems(node, c.graph.nodes[node_id].type)
            for pin in c.inputs(node_id):
                with dpg.node_attribute(attribute_type=dpg.mvNode_Attr_Input, shape=_shape(pin)) as attr:
                    label = dpg.add_text(pin.title, show=False)
                    widget, extra = self._add_widget(node_id, pin)
                with dpg.tooltip(attr):
                    dpg.add_text(pin.description, wrap=300)
                dpg.bind_item_theme(attr, self.pin_theme(pin))
                self.pins[attr] = (node_id, pin.name, False)
                items.inputs[pin.name] = InputItems(attr, label, widget, pin.widget, extra)
            for pin in c.outputs(node_id):
                with dpg.node_attribute(attribute_type=dpg.mvNode_Attr_Output, shape=_shape(pin)) as attr:
                    dpg.add_text(pin.title, indent=max(0, WIDGET_WIDTH - 7 * len(pin.title)))
                with dpg.tooltip(attr):
                    dpg.add_text(pin.description, wrap=300)
                dpg.bind_item_theme(attr, self.pin_theme(pin))
                self.pins[attr] = (node_id, pin.name, True)
                items.outputs[pin.name] = attr
            with dpg.node_attribute(attribute_type=dpg.mvNode_Attr_Static) as items.static:
                items.state_text = dpg.add_text("idle", color=(170, 170, 170))
                with dpg.tooltip(items.state_text):
                    items.error_tip = dpg.add_text("", wrap=360)
                items.progress = dpg.add_progress_bar(default_value=0.0, width=WIDGET_WIDTH, show=False)
        self.nodes[node_id] = items
        self.update_status(node_id)

    def _add_widget(self, node_id: str, pin: PinSpec) -> tuple[int | None, int | None]:
        """The input's widget from its WidgetSpec (see schema.widget_for)."""
        spec, value = pin.widget, self.c.value(node_id, pin.name)
        common = {"label": pin.title, "width": WIDGET_WIDTH}
        extra = None
        if spec.kind == "none":
            return None, None
        if spec.kind in ("int", "seed", "float") and (spec.optional or not _fits_int32(spec)):
            # Dear PyGui's int widgets are 32-bit (seeds go to 2**32-1) and a number widget cannot
            # be empty (an optional field's "unset"): those numbers are typed as text
            widget = dpg.add_input_text(default_value="", decimal=True, hint="not set" if spec.optional else "", **common)
            self.text_numbers.add(widget)
        elif spec.kind in ("int", "seed"):
            widget = dpg.add_input_int(default_value=int(value or 0), **_bounds(spec, int), **common)
        elif spec.kind == "float":
            bounds = _bounds(spec, float)
            small = spec.min is not None and spec.max is not None and spec.max - spec.min <= 16
            widget = dpg.add_input_float(default_value=float(value or 0.0), format="%.3f",
                                         step=0.05 if small else 1.0, **bounds, **common)
        elif spec.kind == "bool":
            widget = dpg.add_checkbox(label=pin.title, default_value=bool(value))
        elif spec.kind in ("combo", "model"):
            choices = self._combo_items(spec)
            widget = dpg.add_combo(choices, default_value=choices[0], **common)  # the value is set by _sync_node
        elif spec.kind == "multiline":
            widget = dpg.add_input_text(default_value=str(value or ""), multiline=True, height=64, label=pin.title,
                                        width=WIDGET_WIDTH + 80)
        elif spec.kind == "path":
            with dpg.group(horizontal=True):
                widget = dpg.add_input_text(default_value=str(value or ""), hint=pin.title, width=WIDGET_WIDTH)
                extra = dpg.add_button(label="...", user_data=(node_id, pin.name),
                                       callback=lambda s, a, u: self.ask_path("pick", u))
        else:
            widget = dpg.add_input_text(default_value=str(value or ""), **common)
        if spec.kind == "seed":  # the randomize toggle sits under the number
            extra = dpg.add_checkbox(label="randomize each run", default_value=self.c.randomized(node_id, pin.name),
                                     user_data=(node_id, pin.name),
                                     callback=lambda s, a, u: self.c.set_randomize(u[0], u[1], a))
        self.widget_field[widget] = (node_id, pin.name, spec)
        dpg.configure_item(widget, user_data=(node_id, pin.name, spec), callback=self._on_value)
        return widget, extra

    def _combo_items(self, spec: Any) -> list[str]:
        choices = [str(v) for v in spec.choices] if spec.kind == "combo" else self.c.model_choices(spec.model_kind)
        if spec.kind == "model" and not choices:
            choices = [NO_MODELS]
        return [NONE_CHOICE, *choices] if spec.optional else choices

    def _sync_node(self, node_id: str) -> None:
        """Bring one drawn node in line with the graph: values, which inputs are linked, position,
        and the model lists (they arrive from the AI worker after the node is drawn)."""
        c, items = self.c, self.nodes[node_id]
        node = c.graph.nodes[node_id]
        linked = c.linked_inputs(node_id)
        snapshot = (dict(node.values), linked, tuple(c.position(node_id)), c.models_version)
        if snapshot == items.snapshot:
            return
        models_changed = not items.snapshot or items.snapshot[3] != c.models_version
        for name, inp in items.inputs.items():
            if models_changed and inp.widget is not None and inp.spec.kind == "model":
                dpg.configure_item(inp.widget, items=self._combo_items(inp.spec))
            is_linked = name in linked
            dpg.configure_item(inp.label, show=is_linked or inp.widget is None)
            if inp.widget is not None:
                dpg.configure_item(inp.widget, show=not is_linked)
                dpg.set_value(inp.widget, self._display(inp.widget, inp.spec, c.value(node_id, name)))
            if inp.extra is not None:
                dpg.configure_item(inp.extra, show=not is_linked)
                if inp.spec.kind == "seed":
                    dpg.set_value(inp.extra, c.randomized(node_id, name))
        if not items.snapshot or items.snapshot[2] != snapshot[2]:
            dpg.set_item_pos(items.node, list(snapshot[2]))
        items.snapshot = snapshot

    def _draw_link(self, link: Link) -> None:
        source, target = self.nodes[link.from_node], self.nodes[link.to_node]
        item = dpg.add_node_link(source.outputs[link.from_field], target.inputs[link.to_field].attr, parent=self.editor)
        port_tag = self.c.graph.output_tag(link.from_node, link.from_field)
        dpg.bind_item_theme(item, self.link_theme(tag_colour(port_tag)))
        self.links[link] = item
        self.link_of[item] = link

    def _delete_link(self, link: Link) -> None:
        item = self.links.pop(link)
        self.link_of.pop(item, None)
        dpg.delete_item(item)

    def _delete_node(self, node_id: str) -> None:
        """The one safe way to remove a drawn node: its links go first (see module docstring)."""
        for link in [l for l in self.links if node_id in (l.from_node, l.to_node)]:
            self._delete_link(link)
        items = self.nodes.pop(node_id)
        for attr in [*(i.attr for i in items.inputs.values()), *items.outputs.values()]:
            self.pins.pop(attr, None)
        for inp in items.inputs.values():
            self.widget_field.pop(inp.widget, None)
            self.pending_edits.pop(inp.widget, None)
            self.text_numbers.discard(inp.widget)
        dpg.delete_item(items.node)
        if items.texture is not None:
            dpg.delete_item(items.texture)

    # --- node status (O(1) per node) --------------------------------------------------------

    def update_status(self, node_id: str) -> None:
        status, items = self.c.status.get(node_id), self.nodes[node_id]
        if status is None:
            return
        state = status.state
        text = STATE_TEXT.get(state, state)
        if state == "running" and status.total:
            text = f"running {status.step}/{status.total}" + (f"  {status.message}" if status.message else "")
        if status.error:
            text += "  (hover for error)"
        dpg.set_value(items.state_text, text)
        colour = STATE_COLOURS.get(state, STATE_COLOURS[IDLE])
        dpg.configure_item(items.state_text, color=tuple(min(255, v + 110) for v in colour))  # readable on the node body
        dpg.set_value(items.error_tip, status.error or text)
        running = state == "running"
        dpg.configure_item(items.progress, show=running, default_value=status.fraction,
                           overlay=f"{status.step}/{status.total}" if status.total else "")
        if items.state != state:
            dpg.bind_item_theme(items.node, self.state_theme(state))
            items.state = state
        if status.thumb is not None:
            self._show_thumb(items, node_id, status.thumb)
            status.thumb = None

    def _show_thumb(self, items: NodeItems, node_id: str, pixels: Any) -> None:
        """Textures are made the first time a node has an image (most nodes never do)."""
        if items.texture is None:
            items.texture = dpg.add_dynamic_texture(THUMB, THUMB, pixels, parent=self.textures)
            items.image = dpg.add_image_button(items.texture, parent=items.static, width=THUMB, height=THUMB,
                                               user_data=node_id, callback=lambda s, a, u: self.open_viewer(u))
            with dpg.tooltip(items.image):
                dpg.add_text("click to open the image")
        else:
            dpg.set_value(items.texture, pixels)

    def _update_bars(self) -> None:
        c = self.c
        running = f"Running: {c.label(c.running_node)}" if c.running_node and c.is_running else ("Running..." if c.is_running else "")
        self._set(self.running_text, value=running)
        self._set(self.cancel_button, enabled=c.is_running)
        name = (c.path.name if c.path else "untitled") + (" *" if c.dirty else "")
        self._set(self.status_text, value=f"{name}  |  {c.message}",
                  color=(235, 120, 120) if c.message_is_error else (200, 200, 200))
        shown = c.last_error and not (c.message_is_error and c.message == c.last_error)  # not twice in a row
        self._set(self.error_text, value=f"Last error: {c.last_error}" if shown else " ")
        if c.log_total != self.log_seen:
            new = min(c.log_total - self.log_seen, len(c.log))
            for line in list(c.log)[-new:]:
                dpg.add_text(line, parent=self.log_window)
            children = dpg.get_item_children(self.log_window, 1)
            for item in children[:-LOG_LINES]:
                dpg.delete_item(item)
            dpg.set_y_scroll(self.log_window, -1.0)
            self.log_seen = c.log_total

    def _display(self, widget: int, spec: WidgetSpec, value: Any) -> Any:
        """A field value as its widget shows it."""
        if value is None and spec.optional:
            return NONE_CHOICE if spec.kind in ("combo", "model") else ""
        if widget in self.text_numbers:
            return str(value) if value is not None else ""
        if spec.kind in ("int", "seed"):
            return int(value or 0)
        if spec.kind == "float":
            return float(value or 0.0)
        if spec.kind == "bool":
            return bool(value)
        return "" if value is None else str(value)

    def _set(self, item: int, **config: Any) -> None:
        """Change a status-bar item only when what it shows changes (they are set every frame)."""
        if self._shown.get(item) != config:
            self._shown[item] = dict(config)
            value = config.pop("value", None)
            if value is not None:
                dpg.set_value(item, value)
            if config:
                dpg.configure_item(item, **config)

    # --- gestures ----------------------------------------------------------------------------

    def _on_link(self, sender: Any, app_data: tuple[int, int]) -> None:
        a, b = (self.pins.get(int(x)) for x in app_data)
        if a is None or b is None:
            return
        source, target = (a, b) if a[2] else (b, a)
        self.c.connect(source[0], source[1], target[0], target[1])  # drawn by sync() only if accepted

    def _on_delink(self, sender: Any, link_item: int) -> None:
        link = self.link_of.get(int(link_item))
        if link is not None:
            self.c.delete(links=[link])

    def _on_value(self, sender: int, app_data: Any, user_data: tuple[str, str, WidgetSpec]) -> None:
        if user_data[2].kind in COMMIT_WHEN_DONE:
            self.pending_edits[sender] = user_data  # committed by _commit_finished_edits
        else:
            self._commit_value(sender, app_data, user_data)

    def _commit_finished_edits(self) -> None:
        """Text and number edits become one value change when the widget loses focus (Enter,
        click elsewhere).  Only widgets with an edit in progress are looked at, not all of them
        (per-widget item handlers cost Dear PyGui a third of the frame time at 50 nodes)."""
        for widget, info in list(self.pending_edits.items()):
            if not dpg.does_item_exist(widget):
                del self.pending_edits[widget]
            elif not dpg.is_item_active(widget):
                del self.pending_edits[widget]
                self._commit_value(widget, dpg.get_value(widget), info)

    def _typing(self) -> bool:
        """Is a text field focused?  Then Delete and Ctrl+Z/Y are for it, not for the canvas.
        Asked only when such a key is pressed."""
        fields = [*self.widget_field, self.search, self.add_search, self.models_input, self.outputs_input]
        return any(dpg.is_item_active(item) for item in fields)

    def _commit_value(self, widget: int, raw: Any, info: tuple[str, str, WidgetSpec]) -> None:
        node_id, name, spec = info
        if raw == NO_MODELS:
            return
        try:
            value = coerce(spec, raw)
        except (TypeError, ValueError):
            value = raw
        if not self.c.set_value(node_id, name, value) and node_id in self.c.graph.nodes:
            dpg.set_value(widget, self._display(widget, spec, self.c.value(node_id, name)))  # refused: show what holds

    def _selected(self) -> tuple[list[str], list[Link]]:
        nodes = [dpg.get_item_user_data(n) for n in dpg.get_selected_nodes(self.editor)]
        links = [self.link_of[l] for l in dpg.get_selected_links(self.editor) if l in self.link_of]
        return [n for n in nodes if n], links

    def delete_selected(self) -> None:
        nodes, links = self._selected()
        if self.c.delete(nodes, links):
            dpg.clear_selected_nodes(self.editor)
            dpg.clear_selected_links(self.editor)

    def _on_mouse_release(self) -> None:
        """A drag ends: record moved nodes (one undo step) and the selection."""
        moved = {}
        for item in dpg.get_selected_nodes(self.editor):
            node_id = dpg.get_item_user_data(item)
            items = self.nodes.get(node_id)
            if items is None:
                continue
            pos = tuple(float(v) for v in dpg.get_item_pos(item))
            if items.snapshot and pos != items.snapshot[2]:
                moved[node_id] = pos
                items.snapshot = (*items.snapshot[:2], pos, *items.snapshot[3:])
        self.c.selection = {dpg.get_item_user_data(n) for n in dpg.get_selected_nodes(self.editor)}
        if moved:
            self.c.move(moved)

    def _on_key(self, sender: Any, key: int) -> None:
        ctrl = dpg.is_key_down(dpg.mvKey_LControl) or dpg.is_key_down(dpg.mvKey_RControl)
        if ctrl and key in (dpg.mvKey_Return, dpg.mvKey_NumPadEnter):
            self.c.run()
        elif key == dpg.mvKey_Escape:
            self.c.cancel()
        elif ctrl and key == dpg.mvKey_S:
            self.save()
        elif ctrl and key == dpg.mvKey_O:
            self.request(self.ask_open)
        elif self._typing():
            return
        elif key == dpg.mvKey_Delete:
            self.delete_selected()
        elif ctrl and key == dpg.mvKey_Z:
            self.c.undo()
        elif ctrl and key == dpg.mvKey_Y:
            self.c.redo()

    def _on_right_click(self) -> None:
        mouse = dpg.get_mouse_pos(local=False)
        if not _inside(mouse, self.editor_area()) or any(dpg.is_item_shown(w) for w in self.overlays):
            return  # not on the canvas, or over a window drawn above it
        self.context_pos = self.to_editor(mouse)
        self.context_node = self.node_at(mouse)
        menu = self.node_menu if self.context_node else self.add_menu
        for entry in dpg.get_item_children(self.node_menu, 1):
            dpg.set_value(entry, False)  # selectables stay highlighted from the last pick
        if menu is self.add_menu:
            dpg.set_value(self.add_search, "")
            self._fill_add_menu()
        dpg.set_item_pos(menu, [int(mouse[0]), int(mouse[1])])
        dpg.show_item(menu)
        if menu is self.add_menu:
            dpg.focus_item(self.add_search)

    def node_at(self, point: list[float]) -> str | None:
        """The drawn node under a screen point (nodes do not report hovering; asked on right-click only)."""
        pad = ITEM_SPACING  # a node's rectangle is its content, the frame is one padding wider
        for node_id, items in reversed(list(self.nodes.items())):  # later nodes are drawn on top
            (x0, y0), (x1, y1) = dpg.get_item_rect_min(items.node), dpg.get_item_rect_max(items.node)
            if x0 - pad <= point[0] <= x1 + pad and y0 - 3 * pad <= point[1] <= y1 + pad:
                return node_id
        return None

    def _fill_add_menu(self) -> None:
        self._fill_node_list(self.add_list, dpg.get_value(self.add_search), self._add_from_menu)

    def _add_from_menu(self, node_type: str) -> None:
        dpg.hide_item(self.add_menu)
        self.add_node(node_type, self.context_pos)

    def add_node(self, node_type: str, pos: tuple[float, float]) -> str | None:
        try:
            return self.c.add_node(node_type, pos)
        except CanvasError:
            return None  # the status bar already says why

    def add_at_center(self, node_type: str) -> str | None:
        """Palette click: the new node lands in the middle of the visible part of the canvas."""
        x0, y0, x1, y1 = self.editor_area()
        offset = 20 * (len(self.c.graph.nodes) % 8)  # successive adds do not stack exactly
        return self.add_node(node_type, self.to_editor(((x0 + x1) / 2 - 80 + offset, y0 + (y1 - y0) / 3 + offset)))

    def editor_area(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the node editor on screen.  It reports its size but not its
        position; it sits right of the palette, one item spacing away."""
        x, y, x1, _ = area(self.palette_window)
        w, h = dpg.get_item_rect_size(self.editor)
        return x1 + ITEM_SPACING, y, x1 + ITEM_SPACING + w, y + h

    def to_editor(self, screen: tuple[float, float]) -> tuple[float, float]:
        """Screen -> editor coordinates.  imnodes has no pan API, so the current pan is read
        off any drawn node: its screen rectangle minus its editor position."""
        for items in self.nodes.values():
            if dpg.is_item_visible(items.node):
                rx, ry = dpg.get_item_rect_min(items.node)
                px, py = dpg.get_item_pos(items.node)
                return (screen[0] - (rx - px), screen[1] - (ry - py))
        ex, ey, _, _ = self.editor_area()
        return (screen[0] - ex, screen[1] - ey)

    def _delete_context_node(self) -> None:
        dpg.hide_item(self.node_menu)
        if self.context_node:
            self.c.delete([self.context_node])

    # --- image viewer ------------------------------------------------------------------------

    def open_viewer(self, node_id: str | None) -> None:
        dpg.hide_item(self.node_menu)
        status = self.c.status.get(node_id or "")
        if status is None or not status.image_name:
            self.c.say("This node has no image yet: run the graph first", error=True)
            return
        image = self.c.load_image(status.image_name)
        if image is None:
            return
        width, height, pixels = image_rgba(image, VIEWER)
        dpg.delete_item(self.viewer_group, children_only=True)
        texture = dpg.add_static_texture(width, height, pixels, parent=self.textures)
        dpg.add_image(texture, parent=self.viewer_group)
        dpg.add_text(f"{status.image_name}  ({image.width}x{image.height})", parent=self.viewer_group)
        if getattr(self, "_viewer_texture", None) is not None:
            dpg.delete_item(self._viewer_texture)  # textures have a fixed size: a new one per image
        self._viewer_texture = texture
        self.viewer_image = status.image_name
        dpg.configure_item(self.viewer, label=f"Image: {self.c.label(node_id)}", show=True)
        x0, y0, x1, y1 = self.editor_area()
        dpg.set_item_pos(self.viewer, [int(x1 - VIEWER - 60), int(y0 + 20)])  # over the canvas's right side

    # --- files and prompts -------------------------------------------------------------------

    def request(self, action: Callable[[], Any]) -> None:
        """Run an action that replaces the graph or quits, asking first if there are unsaved changes."""
        if self.c.dirty:
            self.pending = action
            dpg.show_item(self.prompt)
            w, h = dpg.get_viewport_client_width(), dpg.get_viewport_client_height()
            dpg.set_item_pos(self.prompt, [w // 2 - 180, h // 2 - 50])
        else:
            action()
            self._fill_recent()

    def offer_restore(self, found: Found) -> None:
        """At start, after a crash: show what was left unsaved and ask whether to bring it back."""
        self.found = found
        dpg.set_value(self.restore_text, found.describe())
        dpg.show_item(self.restore_prompt)
        w, h = dpg.get_viewport_client_width(), dpg.get_viewport_client_height()
        dpg.set_item_pos(self.restore_prompt, [w // 2 - 280, h // 2 - 60])

    def _restore(self) -> None:
        dpg.hide_item(self.restore_prompt)
        found, self.found = self.found, None
        if found is not None and self.recovery is not None:
            self.recovery.restore(found)
            self._fill_recent()

    def _discard_recovered(self) -> None:
        dpg.hide_item(self.restore_prompt)
        self.found = None
        if self.recovery is not None:
            self.recovery.discard()

    def _prompt_save(self) -> None:
        dpg.hide_item(self.prompt)
        if self.save():
            self._prompt_discard()

    def _prompt_cancel(self) -> None:
        dpg.hide_item(self.prompt)
        self.pending = None

    def _prompt_discard(self) -> None:
        dpg.hide_item(self.prompt)
        action, self.pending = self.pending, None
        if action is not None:
            self.c.dirty = False
            action()
            self._fill_recent()

    def save(self) -> bool:
        if self.c.save():
            self._fill_recent()
            return True
        if self.c.path is None:
            self.ask_path("save", None)
        return False

    def ask_open(self) -> None:
        self.ask_path("open", None)

    def ask_path(self, purpose: str, data: Any) -> None:
        self.dialog_purpose = (purpose, data)
        labels = {"open": "Open a session (.json) or an image made by invoke-nodes (.png)",
                  "save": "Save the session as...", "image": "Save the image as...", "pick": "Choose a file"}
        dpg.configure_item(self.file_dialog, label=labels[purpose],
                           default_filename="graph" if purpose == "save" else "image" if purpose == "image" else "")
        dpg.show_item(self.file_dialog)

    def _on_file_chosen(self, sender: Any, app_data: dict[str, Any]) -> None:
        path = app_data.get("file_path_name") or ""
        purpose, data = self.dialog_purpose
        if not path:
            return
        if purpose == "open":
            self.c.open(path)
        elif purpose == "save":
            if not path.lower().endswith(".json"):
                path = str(Path(path).with_suffix(".json"))
            if self.c.save(path) and self.pending is not None:
                self._prompt_discard()  # saved from the unsaved-changes prompt: now do what was asked
        elif purpose == "image" and self.viewer_image:
            self.c.export_image(self.viewer_image, path)
        elif purpose == "pick":
            node_id, name = data
            self.c.set_value(node_id, name, path)
        self._fill_recent()

    def show_settings(self) -> None:
        s = self.c.settings
        dpg.set_value(self.models_input, str(s.models_dir))
        dpg.set_value(self.outputs_input, str(s.outputs_dir))
        dpg.set_value(self.theme_combo, s.theme)
        dpg.show_item(self.settings_window)

    def _save_settings(self) -> None:
        theme = dpg.get_value(self.theme_combo)
        self.c.update_settings(models_dir=dpg.get_value(self.models_input), outputs_dir=dpg.get_value(self.outputs_input),
                               theme=theme)
        self.apply_theme(theme)
        dpg.hide_item(self.settings_window)


def area(item: int) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a child window in viewport coordinates (it reports a position and a
    size, not a rectangle; the primary window starts at the viewport's origin)."""
    (x, y), (w, h) = dpg.get_item_pos(item), dpg.get_item_rect_size(item)
    return x, y, x + w, y + h


def _inside(point: list[float], rect: tuple[float, float, float, float]) -> bool:
    x0, y0, x1, y1 = rect
    return x0 <= point[0] < x1 and y0 <= point[1] < y1


def _shape(pin: PinSpec) -> int:
    """Lists and collecting inputs get square pins; single values round ones."""
    return dpg.mvNode_PinShape_QuadFilled if pin.is_list else dpg.mvNode_PinShape_CircleFilled


def _bounds(spec: WidgetSpec, kind: type) -> dict[str, Any]:
    bounds: dict[str, Any] = {}
    if spec.min is not None:
        bounds.update(min_value=kind(spec.min), min_clamped=True)
    if spec.max is not None:
        bounds.update(max_value=kind(min(spec.max, 2**31 - 1)), max_clamped=True)
    return bounds


def _fits_int32(spec: WidgetSpec) -> bool:
    return (spec.max is None or spec.max <= 2**31 - 1) and (spec.min is None or spec.min >= -(2**31))

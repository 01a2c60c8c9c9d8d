"""The Dear PyGui view: draws what the controller holds and forwards gestures to it.

Rules that keep it safe and cheap:
- callbacks are queued by Dear PyGui (manual callback management) and run in `frame()`, on the
  same thread that drains the engine's events, so no Dear PyGui call ever comes from a worker;
- the graph is re-synced only when the controller's revision changes, and only nodes whose
  values, links or position differ are touched; a progress event redraws only its node;
- a node is deleted after its links (Dear PyGui 2.3 crashes deleting a node with links);
- the editor has no zoom, pan API or selection API: zoom is emulated (positions through the
  controller's Viewport, a font per zoom level), the pan is read off a drawn node, and nodes
  selected by a gesture (Ctrl+A, paste) are marked with a theme;
- group frames and the minimap are drawn on the viewport layer above the nodes (node text and
  images would draw over anything drawn inside the editor), never under a menu or panel.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dearpygui.dearpygui as dpg

from app.examples import examples
from services.engine.graph import Link

from .controller import IDLE, WIDGET_WIDTH, CanvasController, CanvasError, Viewport
from .recovery import Found, Recovery
from .schema import NONE_CHOICE, PinSpec, WidgetSpec, coerce, tag_colour
from .thumbs import THUMB, VIEWER, image_rgba

PALETTE_WIDTH = 230
LOG_HEIGHT = 110
LOG_LINES = 200
NO_MODELS = "(no models found: see Settings)"
ITEM_SPACING = 8  # Dear ImGui's default horizontal item spacing (the style is not changed)
GALLERY_THUMB = 96
BUTTON_PAD = 1  # an image button's frame around its image, each side
GALLERY_SHOWN = 48  # thumbnails drawn in the gallery window (the newest)
FONT_FILES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf",
              "/Library/Fonts/Arial.ttf", "C:/Windows/Fonts/arial.ttf")
BYPASS_COLOUR = (120, 60, 150)

# One list, shown by F1 / Help and in the menus' labels.
SHORTCUTS: list[tuple[str, str]] = [
    ("Ctrl+Enter", "Run (a value still being typed is committed first)"),
    ("Ctrl+Shift+Enter", "Run to here: only the selected nodes and what they need"),
    ("Esc", "Cancel everything queued and running"),
    ("Ctrl+Z / Ctrl+Y", "Undo / redo"),
    ("Ctrl+A", "Select all nodes"),
    ("Ctrl+C / Ctrl+V", "Copy / paste nodes (as JSON on the clipboard: works between windows)"),
    ("Ctrl+D", "Duplicate the selection (links inside it kept)"),
    ("Delete", "Delete the selection"),
    ("Ctrl+B", "Bypass the selection: inputs pass through without running"),
    ("Ctrl+G", "Put the selection in a group"),
    ("Ctrl+wheel", "Zoom about the mouse (smallest: nodes shrink to title and pins)"),
    ("F or Home", "Fit the graph in view"),
    ("Ctrl+S / Ctrl+O", "Save / open (.json, or a PNG the app made)"),
    ("F1", "This list"),
    ("Right-click", "On the canvas: add a node; on a node: its menu; on a link: delete, insert a reroute"),
    ("Drop a link on empty canvas", "Search the nodes that take it; the one picked is added linked"),
    ("Drag from the palette or gallery", "The node (or a load_image node) lands under the mouse"),
    ("Drag a group's title", "Moves the group with its nodes"),
    ("Right-click a group's title", "Rename, colour, collapse or expand, select its nodes, remove"),
]

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
    placeholder: int | None = None  # the thumbnail's room, kept from the start so the node never grows over others
    state: str | None = None
    bypassed: bool = False
    hidden: bool = False
    snapshot: tuple = ()  # (values, linked, position, models_version, zoom) last drawn


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
        self.vp = Viewport()  # emulated zoom: model positions -> editor grid
        self.fonts: dict[float, int] = {}
        self.ctrl = False  # tracked from Ctrl's own press/release callbacks (see _handle_keys)
        self.shift = False
        self.key_batch: list[int] = []
        self.modifiers_up: set[str] = set()
        self.palette_entries: list[int] = []
        self.press: tuple[str, Any] | None = None  # what a left press started on: palette entry, gallery image, pin, group title
        self.press_at = (0.0, 0.0)
        self.link_drop: tuple[str, str, bool] | None = None  # the pin a link was dropped from (search menu)
        self._drop_check: tuple[int, tuple[str, str, bool], list[float], int] | None = None
        self.context_link: Link | None = None
        self.context_group: int | None = None
        self.group_drag: tuple[int, list[str], float, float] | None = None  # group index, its nodes, the offset so far
        self.gallery_drawn = -1
        self.gallery_textures: dict[str, int] = {}
        self.queue_drawn: tuple = ()
        self.groups_drawn: tuple = ()
        self.minimap_drawn: tuple = ()
        self.measure = False
        self.gallery_buttons: dict[str, int] = {}
        self.add_types: set[str] | None = None
        self.group_title_field: int | None = None
        self.soft: set[str] = set()  # nodes selected by a gesture (Dear PyGui selects only by mouse)
        self.own_clipboard: str | None = None

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
        if self.key_batch or self.modifiers_up:
            self._handle_keys()
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
                self.run_button = dpg.add_button(label="Run  (Ctrl+Enter)", callback=lambda: self.run_graph())
                dpg.add_text("x")
                self.run_count = dpg.add_input_int(default_value=1, min_value=1, max_value=100, min_clamped=True,
                                                   max_clamped=True, width=80)
                with dpg.tooltip(self.run_count):
                    dpg.add_text("Run xN: queue this many runs, each with new seeds")
                dpg.add_button(label="Run to here", callback=lambda: self.run_to_here())
                self.cancel_button = dpg.add_button(label="Cancel  (Esc)", callback=lambda: self.c.cancel())
                self.pause_box = dpg.add_checkbox(label="pause queue", callback=lambda s, a: self.c.pause_queue(a))
                self.queue_button = dpg.add_button(label="Queue", callback=lambda: self.toggle(self.queue_window))
                self.gallery_button = dpg.add_button(label="Gallery", callback=lambda: self.toggle(self.gallery_window))
                dpg.add_spacer(width=20)
                self.device_line = f"Device: {self.c.device}"
                self.device_text = dpg.add_text(self.device_line)
                dpg.add_spacer(width=20)
                self.zoom_text = dpg.add_text("100%")
                dpg.add_spacer(width=20)
                self.running_text = dpg.add_text("")
            with dpg.group(horizontal=True):
                with dpg.child_window(width=PALETTE_WIDTH, height=-LOG_HEIGHT - 30) as self.palette_window:
                    dpg.add_text("Nodes (click or drag onto the canvas)")
                    self.search = dpg.add_input_text(hint="search...", width=-1, callback=self._fill_palette)
                    self.palette_list = dpg.add_group()
                # directly in the layout: wrapped in a child window the editor costs ~20% more per frame
                self.editor = dpg.add_node_editor(callback=self._on_link, delink_callback=self._on_delink,
                                                  width=-1, height=-LOG_HEIGHT - 30)
            with dpg.child_window(height=LOG_HEIGHT, label="log") as self.log_window:
                pass
            with dpg.group(horizontal=True):
                self.status_text = dpg.add_text("")
                dpg.add_spacer(width=30)
                self.error_text = dpg.add_text("", color=(230, 110, 110))
        self._fill_palette()
        self._build_popups()
        self._build_panels()
        self._build_handlers()
        self._build_fonts()
        self.drawlist = dpg.add_viewport_drawlist(front=True)  # group frames, the minimap
        self.overlays = [self.prompt, self.viewer, self.settings_window, self.file_dialog, self.add_menu, self.node_menu,
                         self.link_menu, self.group_menu, self.help_window, self.queue_window, self.gallery_window,
                         self.restore_prompt]

    def _build_menu(self) -> None:
        with dpg.menu_bar():
            with dpg.menu(label="File"):
                dpg.add_menu_item(label="New demo graph", callback=lambda: self.request(self.c.new_demo))
                with dpg.menu(label="Examples"):
                    for item in examples():
                        dpg.add_menu_item(label=item.title, user_data=item.name,
                                          callback=lambda s, a, u: self.request(lambda: self.c.open_example(u)))
                dpg.add_menu_item(label="Open...  (Ctrl+O)", callback=lambda: self.request(self.ask_open))
                dpg.add_menu_item(label="Import (ComfyUI, A1111, InvokeAI)...",
                                  callback=lambda: self.request(lambda: self.ask_path("import", None)))
                dpg.add_menu_item(label="Save  (Ctrl+S)", callback=self.save)
                dpg.add_menu_item(label="Save as...", callback=lambda: self.ask_path("save", None))
                self.recent_menu = dpg.add_menu(label="Recent")
                dpg.add_separator()
                dpg.add_menu_item(label="Settings...", callback=self.show_settings)
                dpg.add_menu_item(label="Quit", callback=lambda: self.request(self.stop))
            with dpg.menu(label="Edit"):
                dpg.add_menu_item(label="Undo  (Ctrl+Z)", callback=lambda: self.c.undo())
                dpg.add_menu_item(label="Redo  (Ctrl+Y)", callback=lambda: self.c.redo())
                dpg.add_separator()
                dpg.add_menu_item(label="Select all  (Ctrl+A)", callback=self.select_all)
                dpg.add_menu_item(label="Copy  (Ctrl+C)", callback=self.copy)
                dpg.add_menu_item(label="Paste  (Ctrl+V)", callback=lambda: self.paste())
                dpg.add_menu_item(label="Duplicate  (Ctrl+D)", callback=self.duplicate)
                dpg.add_menu_item(label="Delete selected  (Del)", callback=self.delete_selected)
                dpg.add_separator()
                dpg.add_menu_item(label="Bypass selected  (Ctrl+B)", callback=self.toggle_bypass)
                dpg.add_menu_item(label="Group selected  (Ctrl+G)", callback=self.group_selected)
            with dpg.menu(label="View"):
                dpg.add_menu_item(label="Zoom in  (Ctrl+wheel)", callback=lambda: self.zoom(1))
                dpg.add_menu_item(label="Zoom out  (Ctrl+wheel)", callback=lambda: self.zoom(-1))
                dpg.add_menu_item(label="Fit to view  (F / Home)", callback=self.fit)
                dpg.add_separator()
                dpg.add_menu_item(label="Queue", callback=lambda: self.toggle(self.queue_window))
                dpg.add_menu_item(label="Gallery", callback=lambda: self.toggle(self.gallery_window))
            with dpg.menu(label="Run"):
                dpg.add_menu_item(label="Run  (Ctrl+Enter)", callback=lambda: self.run_graph())
                dpg.add_menu_item(label="Run to here  (Ctrl+Shift+Enter)", callback=lambda: self.run_to_here())
                dpg.add_menu_item(label="Cancel  (Esc)", callback=lambda: self.c.cancel())
            self.embeddings_menu = dpg.add_menu(label="Embeddings")
            self.embeddings_version = -1  # the models_version the menu was filled from
            with dpg.menu(label="Help"):
                dpg.add_menu_item(label="Shortcuts  (F1)", callback=self.show_help)
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
        self.palette_entries = self._fill_node_list(self.palette_list, dpg.get_value(self.search),
                                                    lambda t: self.add_at_center(t))

    def _fill_node_list(self, parent: int, search: str, on_pick: Callable[[str], None],
                        types: set[str] | None = None) -> list[int]:
        dpg.delete_item(parent, children_only=True)
        groups = self.c.palette(search, types)
        entries_made = []
        for category, entries in groups.items():
            with dpg.tree_node(label=category, parent=parent, default_open=bool(search) or len(groups) < 4 or types is not None):
                for entry in entries:
                    item = dpg.add_selectable(label=entry["title"], user_data=entry["type"],
                                              callback=lambda s, a, u: (dpg.set_value(s, False), on_pick(u)))
                    with dpg.tooltip(item):
                        dpg.add_text(f"{entry['type']}: {entry['description']}", wrap=320)
                    entries_made.append(item)
        if not groups:
            dpg.add_text("no node matches", parent=parent, color=(160, 160, 160))
        return entries_made

    def _build_popups(self) -> None:
        with dpg.window(label="Add node", show=False, popup=True, width=280, height=380) as self.add_menu:
            self.add_title = dpg.add_text("Add a node here")
            with dpg.group(horizontal=True) as self.add_tools:
                dpg.add_button(label="Paste here", callback=lambda: (dpg.hide_item(self.add_menu), self.paste(self.context_pos)))
                dpg.add_button(label="Note", callback=lambda: self._add_from_menu("note"))
                dpg.add_button(label="Reroute", callback=lambda: self._add_from_menu("reroute"))
            self.add_search = dpg.add_input_text(hint="search...", width=-1,
                                                 callback=lambda: self._fill_add_menu())
            self.add_list = dpg.add_group()
        with dpg.window(label="Node", show=False, popup=True, width=200) as self.node_menu:
            pass  # filled for the node right-clicked (only what applies to it)
        with dpg.window(label="Group", show=False, popup=True, width=220) as self.group_menu:
            pass  # filled for the group right-clicked
        with dpg.window(label="Link", show=False, popup=True, width=180) as self.link_menu:
            dpg.add_selectable(label="Delete link", callback=self._delete_context_link)
            dpg.add_selectable(label="Insert reroute", callback=self._reroute_context_link)
        with dpg.window(label="Unsaved changes", show=False, modal=True, no_resize=True, width=360) as self.prompt:
            dpg.add_text("The graph has unsaved changes.")
            with dpg.group(horizontal=True):
                dpg.add_button(label="Save", callback=self._prompt_save)
                dpg.add_button(label="Discard", callback=self._prompt_discard)
                dpg.add_button(label="Cancel", callback=self._prompt_cancel)
        with dpg.window(label="Import report", show=False, modal=True, width=620) as self.import_window:
            self.import_text = dpg.add_text("", wrap=600)
            dpg.add_button(label="OK", callback=lambda: dpg.hide_item(self.import_window))
        with dpg.window(label="Restore unsaved changes?", show=False, modal=True, no_resize=True,
                        width=560) as self.restore_prompt:
            self.restore_text = dpg.add_text("", wrap=540)
            with dpg.group(horizontal=True):
                dpg.add_button(label="Restore", callback=self._restore)
                dpg.add_button(label="Discard", callback=self._discard_recovered)
        with dpg.window(label="Image", show=False, width=VIEWER + 30, height=VIEWER + 100) as self.viewer:
            with dpg.group(horizontal=True):
                dpg.add_button(label="Save as...", callback=lambda: self.ask_path("image", None))
                dpg.add_button(label="Reveal file", callback=lambda: self.reveal(self.viewer_image))
                dpg.add_button(label="Copy image", callback=lambda: self.copy_image(self.viewer_image))
                dpg.add_button(label="Add to canvas", callback=lambda: self.image_to_canvas(self.viewer_image))
            self.viewer_group = dpg.add_group()
        with dpg.window(label="Settings", show=False, width=520, height=170) as self.settings_window:
            self.models_input = dpg.add_input_text(label="models folder", width=380)
            self.outputs_input = dpg.add_input_text(label="outputs folder", width=380)
            self.theme_combo = dpg.add_combo(["dark", "light"], label="theme", width=120)
            dpg.add_button(label="Save settings", callback=self._save_settings)
        with dpg.window(label="Shortcuts", show=False, width=700, height=560) as self.help_window:
            with dpg.table(header_row=False, borders_innerH=True):
                dpg.add_table_column(width_fixed=True, init_width_or_weight=230)
                dpg.add_table_column()
                for keys, what in SHORTCUTS:
                    with dpg.table_row():
                        dpg.add_text(keys, color=(150, 200, 255))
                        dpg.add_text(what, wrap=400)
        self._build_file_dialog()

    def _build_file_dialog(self) -> None:
        """Made anew for each use: a reused dialog remembers its last filter and rewrites a typed
        name's extension to it ("graph.json" saved as "graph.png")."""
        old = getattr(self, "file_dialog", None)
        if old is not None and dpg.does_item_exist(old):
            dpg.delete_item(old)
        with dpg.file_dialog(show=False, modal=True, width=720, height=440, callback=self._on_file_chosen,
                             cancel_callback=self._prompt_cancel) as self.file_dialog:
            for ext, colour in ((".*", (200, 200, 200)), (".json", (120, 200, 120)), (".png", (200, 160, 220))):
                dpg.add_file_extension(ext, color=colour)
        if old in getattr(self, "overlays", ()):
            self.overlays[self.overlays.index(old)] = self.file_dialog

    def _build_panels(self) -> None:
        with dpg.window(label="Queue", show=False, width=560, height=300, pos=(PALETTE_WIDTH + 300, 80)) as self.queue_window:
            self.queue_table = dpg.add_group()
        with dpg.window(label="Gallery (newest first; drag an image onto the canvas)", show=False, width=470, height=520,
                        pos=(PALETTE_WIDTH + 700, 60)) as self.gallery_window:
            self.gallery_group = dpg.add_group()

    def _build_handlers(self) -> None:
        with dpg.handler_registry():
            dpg.add_key_press_handler(callback=self._on_key)
            dpg.add_key_release_handler(callback=self._on_key_release)
            dpg.add_mouse_click_handler(button=dpg.mvMouseButton_Left, callback=self._on_left_press)
            dpg.add_mouse_release_handler(button=dpg.mvMouseButton_Left, callback=self._on_mouse_release)
            dpg.add_mouse_click_handler(button=dpg.mvMouseButton_Right, callback=self._on_right_click)
            dpg.add_mouse_wheel_handler(callback=self._on_wheel)

    def _build_fonts(self) -> None:
        """The nodes' font follows the zoom: one font per zoom level from a TrueType file the
        system has (without one the text keeps its size and only positions and widths scale)."""
        font_file = next((f for f in FONT_FILES if Path(f).is_file()), None)
        if font_file is None:
            return
        with dpg.font_registry():
            for level in Viewport.LEVELS:
                if level != 1.0:
                    self.fonts[level] = dpg.add_font(font_file, max(6, round(13 * level)))

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

    def state_theme(self, state: str, marked: bool = False) -> int:
        colour = BYPASS_COLOUR if state == "bypassed" else STATE_COLOURS.get(state, STATE_COLOURS[IDLE])
        bright = tuple(min(255, v + 35) for v in colour)
        colours = {dpg.mvNodeCol_TitleBar: bright if marked else colour, dpg.mvNodeCol_TitleBarHovered: bright,
                   dpg.mvNodeCol_TitleBarSelected: bright}
        if marked:  # selected by a gesture (see select): the frame is highlighted like a selection
            colours[dpg.mvNodeCol_NodeOutline] = (240, 190, 70)
            colours[dpg.mvNodeCol_NodeBackground] = (70, 70, 78)
        return self._theme(("state", state, marked), colours)

    def zoom_theme(self, zoom: float) -> int:
        """Node padding, pins and grid scale with the zoom (the font is bound per node)."""
        theme = self._themes.get(("zoom", zoom))
        if theme is None:
            with dpg.theme() as theme:
                with dpg.theme_component(dpg.mvAll):
                    for var, value in ((dpg.mvNodeStyleVar_NodePadding, (8 * zoom, 8 * zoom)),
                                       (dpg.mvNodeStyleVar_GridSpacing, 24 * zoom),
                                       (dpg.mvNodeStyleVar_PinCircleRadius, max(2.0, 4 * zoom)),
                                       (dpg.mvNodeStyleVar_PinQuadSideLength, max(3.0, 7 * zoom))):
                        dpg.add_theme_style(var, *value, category=dpg.mvThemeCat_Nodes) if isinstance(value, tuple) \
                            else dpg.add_theme_style(var, value, category=dpg.mvThemeCat_Nodes)
            self._themes[("zoom", zoom)] = theme
        return theme

    def checkbox_theme(self) -> int:
        """Checkboxes on a node: a lighter box and a bright tick (the default nearly vanishes on
        the dark node body)."""
        theme = self._themes.get("checkbox")
        if theme is None:
            with dpg.theme() as theme:
                with dpg.theme_component(dpg.mvCheckbox):
                    dpg.add_theme_color(dpg.mvThemeCol_FrameBg, (85, 95, 120))
                    dpg.add_theme_color(dpg.mvThemeCol_FrameBgHovered, (105, 118, 150))
                    dpg.add_theme_color(dpg.mvThemeCol_CheckMark, (140, 230, 140))
                    dpg.add_theme_color(dpg.mvThemeCol_Text, (225, 225, 230))
            self._themes["checkbox"] = theme
        return theme

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
        if self.measure:
            self._measure_nodes()
        if self.drawn_revision != self.c.revision:
            self.sync()
        for node_id in self.c.take_changed():
            if node_id in self.nodes:
                self.update_status(node_id)
        if self.embeddings_version != self.c.models_version:
            self._fill_embeddings()
        device_line = f"Device: {self.c.device}" + (f"   |   {self.c.cluster_line}" if self.c.cluster_line else "")
        if device_line != self.device_line:
            self.device_line = device_line
            dpg.set_value(self.device_text, device_line)
        if self._drop_check is not None:
            self._check_link_drop()
        if self.press is not None and self.press[0] == "group":
            self._drag_group_live()
        self._update_bars()
        self._draw_overlay()
        if dpg.is_item_shown(self.queue_window):
            self._draw_queue()
        if dpg.is_item_shown(self.gallery_window) and self.gallery_drawn != self.c.gallery_version:
            self._draw_gallery()

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
        self._sync_hidden()
        self.drawn_revision = self.c.revision
        self.measure = True  # sizes are known after the next frame is drawn

    def _sync_hidden(self) -> None:
        """Nodes in collapsed groups are not drawn, nor their links."""
        hidden = self.c.hidden_nodes() if self.c.groups else set()
        for node_id, items in self.nodes.items():
            if items.hidden != (node_id in hidden):
                items.hidden = node_id in hidden
                dpg.configure_item(items.node, show=not items.hidden)
        for link, item in self.links.items():
            dpg.configure_item(item, show=link.from_node not in hidden and link.to_node not in hidden)

    def _measure_nodes(self) -> None:
        """Tell the controller how large nodes are drawn (placement avoids covering them)."""
        self.measure = False
        sizes = {}
        for node_id, items in self.nodes.items():
            w, h = dpg.get_item_rect_size(items.node)
            if w > 0 and h > 0:
                sizes[node_id] = ((w + 2 * ITEM_SPACING) / self.vp.zoom, (h + 4 * ITEM_SPACING) / self.vp.zoom)
        self.c.report_sizes(sizes)

    def _build_node(self, node_id: str) -> None:
        c = self.c
        with dpg.node(parent=self.editor, label=self._title(node_id), pos=self.vp.to_grid(c.position(node_id)),
                      user_data=node_id) as node:
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
                if c.shows_image(node_id):  # the thumbnail's room from the start: the node never grows over others
                    items.placeholder = dpg.add_spacer(width=THUMB + 2 * BUTTON_PAD, height=THUMB + 2 * BUTTON_PAD)
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
            dpg.bind_item_theme(extra, self.checkbox_theme())
        if spec.kind == "bool":
            dpg.bind_item_theme(widget, self.checkbox_theme())
        self.widget_field[widget] = (node_id, pin.name, spec)
        dpg.configure_item(widget, user_data=(node_id, pin.name, spec), callback=self._on_value)
        return widget, extra

    def _combo_items(self, spec: Any) -> list[str]:
        choices = [str(v) for v in spec.choices] if spec.kind == "combo" else self.c.model_choices(spec.model_kind)
        if spec.kind == "model" and not choices:
            choices = [NO_MODELS]
        return [NONE_CHOICE, *choices] if spec.optional else choices

    def _title(self, node_id: str) -> str:
        return self.c.title(node_id) + ("  (bypassed)" if self.c.bypassed(node_id) else "")

    def _sync_node(self, node_id: str) -> None:
        """Bring one drawn node in line with the graph: values, which inputs are linked, position,
        the model lists (they arrive from the AI worker after the node is drawn), bypass, zoom."""
        c, items = self.c, self.nodes[node_id]
        node = c.graph.nodes[node_id]
        linked = c.linked_inputs(node_id)
        zoom = (self.vp.zoom, self.vp.offset)
        snapshot = (dict(node.values), linked, tuple(c.position(node_id)), c.models_version, zoom, c.bypassed(node_id))
        if snapshot == items.snapshot:
            return
        models_changed = not items.snapshot or items.snapshot[3] != c.models_version
        scale_changed = not items.snapshot or items.snapshot[4][0] != self.vp.zoom
        collapsed = self.vp.collapsed
        width = max(40, int(WIDGET_WIDTH * self.vp.zoom))
        for name, inp in items.inputs.items():
            if models_changed and inp.widget is not None and inp.spec.kind == "model":
                dpg.configure_item(inp.widget, items=self._combo_items(inp.spec))
            is_linked = name in linked
            dpg.configure_item(inp.label, show=is_linked or inp.widget is None or collapsed)
            if inp.widget is not None:
                dpg.configure_item(inp.widget, show=not is_linked and not collapsed)
                if scale_changed and inp.spec.kind != "bool":
                    dpg.configure_item(inp.widget, width=width + (int(80 * self.vp.zoom) if inp.spec.kind == "multiline" else 0))
                dpg.set_value(inp.widget, self._display(inp.widget, inp.spec, c.value(node_id, name)))
            if inp.extra is not None:
                dpg.configure_item(inp.extra, show=not is_linked and not collapsed)
                if inp.spec.kind == "seed":
                    dpg.set_value(inp.extra, c.randomized(node_id, name))
        if scale_changed:
            font = self.fonts.get(self.vp.zoom)
            if font is not None or items.snapshot:
                dpg.bind_item_font(items.node, font if font is not None else 0)
            dpg.configure_item(items.static, show=not collapsed)
            dpg.configure_item(items.progress, width=width)
            thumb = max(16, int(THUMB * self.vp.zoom))
            if items.image is not None:
                dpg.configure_item(items.image, width=thumb, height=thumb)
            if items.placeholder is not None:
                dpg.configure_item(items.placeholder, width=thumb + 2 * BUTTON_PAD, height=thumb + 2 * BUTTON_PAD)
        if not items.snapshot or items.snapshot[2] != snapshot[2] or items.snapshot[4] != zoom:
            dpg.set_item_pos(items.node, self.vp.to_grid(snapshot[2]))
        if not items.snapshot or items.snapshot[5] != snapshot[5]:
            dpg.configure_item(items.node, label=self._title(node_id))
            items.bypassed = snapshot[5]
            items.state = None  # the title colour is redone by update_status
            self.update_status(node_id)
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
        if status.error and state != "canceled":
            text += "  (hover for error)"
        dpg.set_value(items.state_text, text)
        colour = STATE_COLOURS.get(state, STATE_COLOURS[IDLE])
        dpg.configure_item(items.state_text, color=tuple(min(255, v + 110) for v in colour))  # readable on the node body
        dpg.set_value(items.error_tip, status.error or text)
        running = state == "running"
        dpg.configure_item(items.progress, show=running, default_value=status.fraction,
                           overlay=f"{status.step}/{status.total}" if status.total else "")
        if items.state != state:
            dpg.bind_item_theme(items.node, self.state_theme("bypassed" if items.bypassed else state, node_id in self.soft))
            items.state = state
        if status.thumb is not None:
            self._show_thumb(items, node_id, status.thumb)
            status.thumb = None

    def _show_thumb(self, items: NodeItems, node_id: str, pixels: Any) -> None:
        """Textures are made the first time a node has an image (most nodes never do)."""
        if items.texture is None:
            items.texture = dpg.add_dynamic_texture(THUMB, THUMB, pixels, parent=self.textures)
            size = max(16, int(THUMB * self.vp.zoom))
            items.image = dpg.add_image_button(items.texture, parent=items.static, width=size, height=size,
                                               user_data=node_id, callback=lambda s, a, u: self.open_viewer(u))
            if items.placeholder is not None:  # the image takes the room kept for it
                dpg.delete_item(items.placeholder)
                items.placeholder = None
            with dpg.tooltip(items.image):
                dpg.add_text("click to open the image")
        else:
            dpg.set_value(items.texture, pixels)

    def _update_bars(self) -> None:
        c = self.c
        running = f"Running: {c.label(c.running_node)}" if c.running_node and c.is_running else ("Running..." if c.is_running else "")
        self._set(self.running_text, value=running)
        self._set(self.cancel_button, enabled=c.is_running)
        waiting = sum(1 for e in c.queue if e.state == "queued")
        self._set(self.queue_button, label=f"Queue ({waiting} waiting)" if waiting else "Queue")
        self._set(self.gallery_button, label=f"Gallery ({len(c.gallery)})" if c.gallery else "Gallery")
        self._set(self.zoom_text, value=f"zoom {round(self.vp.zoom * 100)}%")
        self._set(self.pause_box, value=c.queue_paused)
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
        fields = [*self.widget_field, self.search, self.add_search, self.models_input, self.outputs_input, self.run_count]
        if self.group_title_field is not None and dpg.does_item_exist(self.group_title_field):
            fields.append(self.group_title_field)
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

    def selected_nodes(self) -> list[str]:
        """The nodes selected by mouse, else those selected by a gesture (Ctrl+A, paste, duplicate)."""
        return self._selected()[0] or [n for n in self.c.graph.order if n in self.soft]

    def delete_selected(self) -> None:
        nodes, links = self._selected()
        if self.c.delete(nodes or self.selected_nodes(), links):
            dpg.clear_selected_nodes(self.editor)
            dpg.clear_selected_links(self.editor)

    def select(self, node_ids: set[str]) -> None:
        """Select nodes from a gesture.  Dear PyGui cannot select nodes from code, so these are
        marked with a highlighted frame until the next click on the canvas."""
        dpg.clear_selected_nodes(self.editor)
        self.sync()  # pasted nodes must exist before they can be marked
        self._mark(set(node_ids))
        self.c.selection = set(node_ids)

    def _mark(self, node_ids: set[str]) -> None:
        changed = self.soft ^ node_ids
        self.soft = node_ids
        for node_id in changed:
            items = self.nodes.get(node_id)
            if items is not None:
                items.state = None  # update_status binds the theme again, marked or not
                self.update_status(node_id)

    def select_all(self) -> None:
        self.select(self.c.select_all())
        self.c.say(f"Selected {len(self.c.selection)} node(s)")

    def copy(self) -> None:
        text = self.c.copy(self.selected_nodes())
        if text is not None:
            self.set_clipboard(text)

    def paste(self, at: tuple[float, float] | None = None) -> None:
        """Ctrl+V pastes under the mouse (when it is over the canvas), the menu at the right-click."""
        if at is None:
            mouse = dpg.get_mouse_pos(local=False)
            if _inside(mouse, self.editor_area()):
                at = self.to_editor(mouse)
        added = self.c.paste(self.read_clipboard(), self.vp.to_model(at) if at is not None else None)
        if added:
            self.select(set(added))

    def set_clipboard(self, text: str | None) -> None:
        if text:
            dpg.set_clipboard_text(text)
            self.own_clipboard = text

    def read_clipboard(self) -> str | None:
        """The clipboard's text.  Dear PyGui aborts the process when the clipboard holds no text
        (GLFW hands it NULL), so it is asked only for what this window put there; another
        window's copy is read with the system's clipboard tool."""
        for command in (["xclip", "-o", "-selection", "clipboard"], ["xsel", "-ob"], ["wl-paste", "-n"], ["pbpaste"],
                        ["powershell", "-NoProfile", "-Command", "Get-Clipboard"]):
            if shutil.which(command[0]):
                try:
                    done = subprocess.run(command, capture_output=True, text=True, timeout=2)
                except (OSError, subprocess.TimeoutExpired):
                    continue
                if done.returncode == 0:
                    return done.stdout
        if self.own_clipboard is not None:
            return dpg.get_clipboard_text()  # ours: text is there (or another app's text replaced it)
        return None

    def duplicate(self) -> None:
        added = self.c.duplicate(self.selected_nodes())
        if added:
            self.select(set(added))

    def toggle_bypass(self, node_ids: list[str] | None = None) -> None:
        ids = node_ids if node_ids is not None else self.selected_nodes()
        if not ids:
            self.c.say("Select the nodes to bypass first", error=True)
            return
        self.c.set_bypass(ids, not all(self.c.bypassed(n) for n in ids))

    def group_selected(self) -> None:
        self.c.add_group(self.selected_nodes())

    def run_graph(self) -> None:
        """Run (button, Ctrl+Enter): a value still being typed is committed first, so the run
        uses what the screen shows."""
        self._commit_all_edits()
        self.c.run(times=max(1, int(dpg.get_value(self.run_count) or 1)))

    def run_to_here(self) -> None:
        self._commit_all_edits()
        self.c.run_to_here(self.selected_nodes() or ([self.context_node] if self.context_node else []))

    def _commit_all_edits(self) -> None:
        for widget, info in list(self.pending_edits.items()):
            del self.pending_edits[widget]
            if dpg.does_item_exist(widget):
                self._commit_value(widget, dpg.get_value(widget), info)

    # --- mouse ---------------------------------------------------------------------------------

    def _on_left_press(self) -> None:
        """Remember what a left press starts on: its release decides (drop on the canvas, link
        dropped on empty canvas, group moved)."""
        mouse = dpg.get_mouse_pos(local=False)
        self.press, self.press_at = None, (mouse[0], mouse[1])
        if any(dpg.is_item_shown(w) for w in (self.prompt, self.file_dialog, self.add_menu, self.node_menu)):
            return
        hovered = next((e for e in self.palette_entries if dpg.does_item_exist(e) and dpg.is_item_hovered(e)), None)
        if hovered is not None:
            self.press = ("palette", dpg.get_item_user_data(hovered))
            return
        if dpg.is_item_shown(self.gallery_window):
            image = next((n for n, t in self.gallery_buttons.items() if dpg.does_item_exist(t) and dpg.is_item_hovered(t)), None)
            if image is not None:
                self.press = ("image", image)
                return
        if not _inside(mouse, self.editor_area()) or self._over_window(mouse):
            return
        if self._minimap_click(mouse):
            return
        group = self.c.group_at(self.vp.to_model(self.to_editor(mouse))) if self.c.groups else None
        if group is not None:
            self.press = ("group", group)
            self.group_drag = (group, self.c.group_members(group), 0.0, 0.0)
            return
        pin = self.pin_at(mouse)
        if pin is not None:
            self.press = ("pin", pin)

    def _on_mouse_release(self) -> None:
        """A drag ends: record moved nodes (one undo step) and the selection; finish a drag that
        started on the palette, the gallery, a pin or a group's title."""
        mouse = dpg.get_mouse_pos(local=False)
        press, self.press = self.press, None
        on_canvas = _inside(mouse, self.editor_area()) and not self._over_window(mouse)
        moved_far = abs(mouse[0] - self.press_at[0]) + abs(mouse[1] - self.press_at[1]) > 12
        if press is not None and moved_far and on_canvas:
            kind, what = press
            at = self.vp.to_model(self.to_editor(mouse))
            if kind == "palette":
                self.add_node(what, self.to_editor(mouse))
                return
            if kind == "image":
                self.c.add_image_node(what, at)
                return
            if kind == "group":
                dx, dy = self._drag_delta(mouse)
                self.group_drag = None
                self.c.move_group(what, dx, dy)
                return
            if kind == "pin" and self.node_at(mouse) is None:
                self._drop_check = (self.c.revision, what, list(mouse), self.frames + 2)
        if self.group_drag is not None:  # a group dragged off the canvas: its nodes go back
            _, members, _, _ = self.group_drag
            self.group_drag = None
            for node_id in members:
                if node_id in self.nodes:
                    self.nodes[node_id].snapshot = ()
                    self._sync_node(node_id)
            self.groups_drawn = ()
        moved = {}
        for item in dpg.get_selected_nodes(self.editor):
            node_id = dpg.get_item_user_data(item)
            items = self.nodes.get(node_id)
            if items is None:
                continue
            pos = tuple(self.vp.to_model(dpg.get_item_pos(item)))
            if items.snapshot and pos != items.snapshot[2]:
                moved[node_id] = pos
                items.snapshot = (*items.snapshot[:2], pos, *items.snapshot[3:])
        self.c.selection = {dpg.get_item_user_data(n) for n in dpg.get_selected_nodes(self.editor)}
        if self.soft and on_canvas:
            self._mark(set())  # a click on the canvas ends a gesture's selection
        if moved:
            self.c.move(moved)

    def _drag_delta(self, mouse: list[float]) -> tuple[float, float]:
        """How far the mouse moved since the press, in model units (from screen pixels: the pan
        read off a node is not steady while nodes move)."""
        return ((mouse[0] - self.press_at[0]) / self.vp.zoom, (mouse[1] - self.press_at[1]) / self.vp.zoom)

    def _drag_group_live(self) -> None:
        """While a group's title is dragged, its frame and nodes follow the mouse (committed on release)."""
        if self.group_drag is None or not dpg.is_mouse_button_down(dpg.mvMouseButton_Left):
            return
        index, members, old_dx, old_dy = self.group_drag
        dx, dy = self._drag_delta(dpg.get_mouse_pos(local=False))
        if (dx, dy) == (old_dx, old_dy):
            return
        self.group_drag = (index, members, dx, dy)
        for node_id in members:
            items = self.nodes.get(node_id)
            if items is not None:
                x, y = self.c.position(node_id)
                dpg.set_item_pos(items.node, self.vp.to_grid((x + dx, y + dy)))

    def _check_link_drop(self) -> None:
        """A link dragged from a pin ended on empty canvas and made no link: open the node search
        filtered to nodes that can take it."""
        revision, pin, mouse, when = self._drop_check
        if self.frames < when:
            return
        self._drop_check = None
        if self.c.revision != revision:
            return  # a link was made after all (or refused: the status bar says why)
        node_id, field, output = pin
        if node_id not in self.c.graph.nodes:
            return
        self.link_drop = pin
        self._open_add_menu(mouse, self.c.compatible_types(node_id, field, output))

    def pin_at(self, point: list[float]) -> tuple[str, str, bool] | None:
        """The pin under a screen point: (node id, field, is output).  Asked on a left press only."""
        for node_id, items in self.nodes.items():
            if items.hidden:
                continue
            (x0, y0), (x1, y1) = dpg.get_item_rect_min(items.node), dpg.get_item_rect_max(items.node)
            if not (x0 - 24 <= point[0] <= x1 + 24 and y0 - 30 <= point[1] <= y1 + 10):
                continue
            pins = [(name, attr, True, x1 + ITEM_SPACING) for name, attr in items.outputs.items()]
            pins += [(name, inp.attr, False, x0 - ITEM_SPACING) for name, inp in items.inputs.items()]
            for name, attr, output, x in pins:
                shown = [i for i in dpg.get_item_children(attr, 1) if dpg.is_item_shown(i)]
                if not shown:
                    continue
                (_, ry0), (_, ry1) = dpg.get_item_rect_min(shown[0]), dpg.get_item_rect_max(shown[0])
                if abs(point[0] - x) <= 10 and ry0 - 3 <= point[1] <= ry1 + 3:
                    return node_id, name, output
        return None

    def _on_wheel(self, sender: Any, delta: int) -> None:
        if not self.ctrl:
            return
        mouse = dpg.get_mouse_pos(local=False)
        if _inside(mouse, self.editor_area()) and not self._over_window(mouse):
            self.zoom(1 if delta > 0 else -1, mouse)

    def _over_window(self, point: list[float]) -> bool:
        """Is a floating window (viewer, queue, gallery, menus) over this point?"""
        for window in self.overlays:
            if dpg.does_item_exist(window) and dpg.is_item_shown(window):
                x0, y0, x1, y1 = self._window_rect(window)
                if x0 <= point[0] <= x1 and y0 <= point[1] <= y1:
                    return True
        return False

    # --- zoom ----------------------------------------------------------------------------------

    def zoom(self, steps: int, screen: list[float] | None = None) -> None:
        """Zoom about a screen point (the mouse; the canvas centre from the menu)."""
        if screen is None:
            x0, y0, x1, y1 = self.editor_area()
            screen = [(x0 + x1) / 2, (y0 + y1) / 2]
        if self.vp.step(steps, self.to_editor(screen)):
            self._apply_zoom()

    def fit(self) -> None:
        """F / Home: the whole graph (visible nodes) in view."""
        ids = [n for n in self.c.graph.order if not (n in self.nodes and self.nodes[n].hidden)]
        if not ids:
            return
        x0, y0, x1, y1 = self.editor_area()
        (gx0, gy0), (gx1, gy1) = self.to_editor((x0, y0)), self.to_editor((x1, y1))
        self.vp.fit([self.c.node_rect(n) for n in ids], (gx0, gy0, gx1, gy1))
        self._apply_zoom()

    def _apply_zoom(self) -> None:
        dpg.bind_item_theme(self.editor, self.zoom_theme(self.vp.zoom))
        for node_id in self.c.graph.order:
            if node_id in self.nodes:
                self._sync_node(node_id)
        self.measure = True
        self.c.say(f"Zoom {round(self.vp.zoom * 100)}%" + ("  (nodes collapsed to title and pins)" if self.vp.collapsed else ""))

    # --- keys ----------------------------------------------------------------------------------

    # Keys arrive as queued callbacks, one batch per frame, ordered by key code rather than by
    # time (Return comes before Ctrl).  Ctrl and Shift are tracked from their own press and release
    # events, and the other keys are handled after the whole batch: a Ctrl pressed with them
    # counts even when its callback comes later, and one released meanwhile still counts (a
    # quick Ctrl+Z was lost when the state was read as the callback ran).

    def _on_key_release(self, sender: Any, key: int) -> None:
        if key in (dpg.mvKey_LControl, dpg.mvKey_RControl):
            self.modifiers_up.add("ctrl")
        elif key in (dpg.mvKey_LShift, dpg.mvKey_RShift):
            self.modifiers_up.add("shift")

    def _on_key(self, sender: Any, key: int) -> None:
        if key in (dpg.mvKey_LControl, dpg.mvKey_RControl):
            self.ctrl = True
        elif key in (dpg.mvKey_LShift, dpg.mvKey_RShift):
            self.shift = True
        else:
            self.key_batch.append(key)

    def _handle_keys(self) -> None:
        """After a frame's callbacks: the keys pressed, with the modifiers held with them."""
        keys, self.key_batch = self.key_batch, []
        for key in keys:
            self._handle_key(key)
        if "ctrl" in self.modifiers_up:
            self.ctrl = False
        if "shift" in self.modifiers_up:
            self.shift = False
        self.modifiers_up.clear()

    def _handle_key(self, key: int) -> None:
        ctrl = self.ctrl
        if ctrl and key in (dpg.mvKey_Return, dpg.mvKey_NumPadEnter):
            self.run_to_here() if self.shift else self.run_graph()
        elif key == dpg.mvKey_Escape:
            self.c.cancel()
        elif key == dpg.mvKey_F1:
            self.show_help()
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
        elif ctrl and key == dpg.mvKey_A:
            self.select_all()
        elif ctrl and key == dpg.mvKey_C:
            self.copy()
        elif ctrl and key == dpg.mvKey_V:
            self.paste()
        elif ctrl and key == dpg.mvKey_D:
            self.duplicate()
        elif ctrl and key == dpg.mvKey_B:
            self.toggle_bypass()
        elif ctrl and key == dpg.mvKey_G:
            self.group_selected()
        elif not ctrl and key in (dpg.mvKey_F, dpg.mvKey_Home):
            self.fit()

    # --- context menus -------------------------------------------------------------------------

    def _on_right_click(self) -> None:
        mouse = dpg.get_mouse_pos(local=False)
        if not _inside(mouse, self.editor_area()) or self._over_window(mouse):
            return  # not on the canvas, or over a window drawn above it
        self.context_pos = self.to_editor(mouse)
        self.context_node = self.node_at(mouse)
        if self.context_node:
            self._fill_node_menu(self.context_node)
            self._show_at(self.node_menu, mouse)
            return
        group = self.c.group_at(self.vp.to_model(self.context_pos)) if self.c.groups else None
        if group is not None:
            self.context_group = group
            self._fill_group_menu(group)
            self._show_at(self.group_menu, mouse)
            return
        self.context_link = self.link_at(mouse)
        if self.context_link is not None:
            for entry in dpg.get_item_children(self.link_menu, 1):
                dpg.set_value(entry, False)
            self._show_at(self.link_menu, mouse)
            return
        self.link_drop = None
        self._open_add_menu(mouse, None)

    def _show_at(self, menu: int, mouse: list[float]) -> None:
        dpg.set_item_pos(menu, [int(mouse[0]), int(mouse[1])])
        dpg.show_item(menu)

    def _open_add_menu(self, mouse: list[float], types: set[str] | None) -> None:
        self.context_pos = self.to_editor(mouse)
        self.add_types = types
        dpg.set_value(self.add_title, "Add a node here" if types is None else "Add a node that takes this link")
        dpg.configure_item(self.add_tools, show=types is None)
        dpg.set_value(self.add_search, "")
        self._fill_add_menu()
        self._show_at(self.add_menu, mouse)
        dpg.focus_item(self.add_search)

    def _fill_node_menu(self, node_id: str) -> None:
        """Only what applies to this node (open image only where there is an image output)."""
        dpg.delete_item(self.node_menu, children_only=True)
        entries: list[tuple[str, Callable[[], Any]]] = []
        if self.c.shows_image(node_id):
            entries.append(("Open image", lambda: self.open_viewer(node_id)))
        entries += [("Run to here  (Ctrl+Shift+Enter)", lambda: self.c.run_to_here(self.selected_nodes() or [node_id])),
                    ("Duplicate  (Ctrl+D)", lambda: self.select(set(self.c.duplicate(self.selected_nodes() or [node_id])))),
                    ("Copy  (Ctrl+C)", lambda: self.set_clipboard(self.c.copy(self.selected_nodes() or [node_id]))),
                    ("Bypass off  (Ctrl+B)" if self.c.bypassed(node_id) else "Bypass  (Ctrl+B)",
                     lambda: self.toggle_bypass(self.selected_nodes() or [node_id])),
                    ("Group selected  (Ctrl+G)", lambda: self.c.add_group(self.selected_nodes() or [node_id])),
                    ("Delete  (Del)", lambda: self.c.delete(self.selected_nodes() or [node_id]))]
        for label, action in entries:
            dpg.add_selectable(label=label, parent=self.node_menu, user_data=action,
                               callback=lambda s, a, u: (dpg.hide_item(self.node_menu), u()))

    def _fill_group_menu(self, index: int) -> None:
        """Right-click on a group's title: rename, colour, collapse or expand, remove."""
        dpg.delete_item(self.group_menu, children_only=True)
        group = self.c.groups[index]
        dpg.add_text(f"Group: {group['title']}", parent=self.group_menu, color=(160, 160, 160))
        title = dpg.add_input_text(default_value=group["title"], parent=self.group_menu, width=-1, on_enter=True,
                                   hint="title (Enter)", callback=lambda s, a: self.c.set_group(index, title=a))
        self.group_title_field = title  # typing here is not a shortcut
        dpg.add_color_edit(default_value=group["colour"], parent=self.group_menu, no_alpha=True, no_inputs=True,
                           label="colour", callback=lambda s, a: self.c.set_group(index, colour=_rgb(a)))
        collapsed = bool(group.get("collapsed"))
        dpg.add_selectable(label="Expand" if collapsed else "Collapse", parent=self.group_menu,
                           callback=lambda: (dpg.hide_item(self.group_menu), self.c.set_group(index, collapsed=not collapsed)))
        dpg.add_selectable(label="Select its nodes", parent=self.group_menu,
                           callback=lambda: (dpg.hide_item(self.group_menu), self.select(set(self.c.group_members(index)))))
        dpg.add_selectable(label="Remove group (keep nodes)", parent=self.group_menu,
                           callback=lambda: (dpg.hide_item(self.group_menu), self.c.delete_group(index)))

    def link_at(self, point: list[float]) -> Link | None:
        """The link under a screen point: imnodes reports the hovered link."""
        for link, item in self.links.items():
            if dpg.is_item_hovered(item):
                return link
        return None

    def _delete_context_link(self) -> None:
        dpg.hide_item(self.link_menu)
        if self.context_link is not None:
            self.c.delete(links=[self.context_link])

    def _reroute_context_link(self) -> None:
        dpg.hide_item(self.link_menu)
        if self.context_link is not None:
            self.c.insert_reroute(self.context_link, self.vp.to_model(self.context_pos))

    def node_at(self, point: list[float]) -> str | None:
        """The drawn node under a screen point (nodes do not report hovering; asked on clicks only)."""
        pad = ITEM_SPACING  # a node's rectangle is its content, the frame is one padding wider
        for node_id, items in reversed(list(self.nodes.items())):  # later nodes are drawn on top
            if items.hidden:
                continue
            (x0, y0), (x1, y1) = dpg.get_item_rect_min(items.node), dpg.get_item_rect_max(items.node)
            if x0 - pad <= point[0] <= x1 + pad and y0 - 3 * pad <= point[1] <= y1 + pad:
                return node_id
        return None

    def _fill_add_menu(self) -> None:
        self._fill_node_list(self.add_list, dpg.get_value(self.add_search), self._add_from_menu, self.add_types)

    def _add_from_menu(self, node_type: str) -> None:
        dpg.hide_item(self.add_menu)
        pin, self.link_drop = self.link_drop, None
        if pin is not None:
            self.c.add_linked(node_type, self.vp.to_model(self.context_pos), *pin)
        else:
            self.add_node(node_type, self.context_pos)

    def add_node(self, node_type: str, pos: tuple[float, float], place: bool = False) -> str | None:
        """Add at an editor (grid) position."""
        try:
            return self.c.add_node(node_type, self.vp.to_model(pos), place=place)
        except CanvasError:
            return None  # the status bar already says why

    def add_at_center(self, node_type: str) -> str | None:
        """Palette click: the new node lands near the middle of the visible canvas, on free space."""
        x0, y0, x1, y1 = self.editor_area()
        return self.add_node(node_type, self.to_editor(((x0 + x1) / 2 - 100, y0 + (y1 - y0) / 4)), place=True)

    def editor_area(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the node editor on screen.  It reports its size but not its
        position; it sits right of the palette, one item spacing away."""
        x, y, x1, _ = area(self.palette_window)
        w, h = dpg.get_item_rect_size(self.editor)
        return x1 + ITEM_SPACING, y, x1 + ITEM_SPACING + w, y + h

    def to_editor(self, screen: tuple[float, float]) -> tuple[float, float]:
        """Screen -> editor grid coordinates.  imnodes has no pan API, so the current pan is read
        off any drawn node: its screen rectangle minus its grid position."""
        pan = self.pan()
        return (screen[0] - pan[0], screen[1] - pan[1])

    def pan(self) -> tuple[float, float]:
        """Screen position of the grid's origin."""
        for items in self.nodes.values():
            if not items.hidden and dpg.is_item_visible(items.node):
                rx, ry = dpg.get_item_rect_min(items.node)
                px, py = dpg.get_item_pos(items.node)
                return (rx - px, ry - py)
        ex, ey, _, _ = self.editor_area()
        return (ex, ey)

    def to_screen(self, model: tuple[float, float], pan: tuple[float, float] | None = None) -> tuple[float, float]:
        gx, gy = self.vp.to_grid(model)
        px, py = pan if pan is not None else self.pan()
        return (gx + px, gy + py)

    # --- overlay: group frames and the minimap (drawn above the nodes) -------------------------

    def _draw_overlay(self) -> None:
        """Redrawn only when what it shows changes (graph, zoom, pan, windows over the canvas)."""
        covered = any(dpg.is_item_shown(w) for w in (self.prompt, self.file_dialog, self.settings_window))
        windows = [self._window_rect(w) for w in self.overlays if dpg.does_item_exist(w) and dpg.is_item_shown(w)]
        pan = self.pan()
        ghost = self._ghost()
        key = (self.c.revision, self.vp.zoom, self.vp.offset, pan, covered, self.editor_area(), tuple(windows),
               tuple(tuple(map(str, g.values())) for g in self.c.groups), self.group_drag and self.group_drag[2:], ghost)
        if key == self.groups_drawn:
            return
        self.groups_drawn = key
        dpg.delete_item(self.drawlist, children_only=True)
        if covered:
            return
        x0, y0, x1, y1 = self.editor_area()
        for number, group in enumerate(self.c.groups):
            gx, gy, gw, gh = group["rect"]
            if self.group_drag is not None and self.group_drag[0] == number:
                gx, gy = gx + self.group_drag[2], gy + self.group_drag[3]
            (sx0, sy0), (sx1, sy1) = self.to_screen((gx, gy), pan), self.to_screen((gx + gw, gy + gh), pan)
            if group.get("collapsed"):
                sy1 = sy0 + 30 * self.vp.zoom
            if sx1 < x0 or sx0 > x1 or sy1 < y0 or sy0 > y1:
                continue
            colour = tuple(group["colour"])
            cx0, cy0, cx1, cy1 = max(sx0, x0), max(sy0, y0), min(sx1, x1), min(sy1, y1)
            if any(_overlap((cx0, cy0, cx1, cy1), w) for w in windows):
                continue  # the viewport layer would draw over a menu or panel
            dpg.draw_rectangle((cx0, cy0), (cx1, cy1), color=(*colour, 230), thickness=2, parent=self.drawlist)
            band = min(cy1, sy0 + 30 * self.vp.zoom)
            if band > cy0:
                dpg.draw_rectangle((cx0, cy0), (cx1, band), color=(*colour, 0), fill=(*colour, 110), parent=self.drawlist)
                if sy0 >= y0 and sx0 >= x0:
                    label = group["title"] + (f"  (collapsed: {len(self.c.group_members(self.c.groups.index(group)))} nodes)"
                                              if group.get("collapsed") else "")
                    dpg.draw_text((sx0 + 8, sy0 + 6 * self.vp.zoom), label, size=max(10, 16 * self.vp.zoom),
                                  color=(255, 255, 255), parent=self.drawlist)
        if not any(_overlap(self._minimap_frame(), w) for w in windows):
            self._draw_minimap(pan)
        if ghost is not None:  # what a palette or gallery drag carries, under the mouse
            label, (mx, my) = ghost
            dpg.draw_rectangle((mx + 12, my + 8), (mx + 24 + 8 * len(label), my + 32), color=(240, 190, 70, 255),
                               fill=(50, 50, 60, 230), rounding=4, parent=self.drawlist)
            dpg.draw_text((mx + 18, my + 12), label, size=15, color=(255, 255, 255), parent=self.drawlist)

    def _ghost(self) -> tuple[str, tuple[int, int]] | None:
        if self.press is None or self.press[0] not in ("palette", "image") or not dpg.is_mouse_button_down(dpg.mvMouseButton_Left):
            return None
        mouse = dpg.get_mouse_pos(local=False)
        if abs(mouse[0] - self.press_at[0]) + abs(mouse[1] - self.press_at[1]) <= 12:
            return None
        label = f"+ {self.press[1]}" if self.press[0] == "palette" else "+ load_image"
        return label, (int(mouse[0]), int(mouse[1]))

    @staticmethod
    def _window_rect(window: int) -> tuple[float, float, float, float]:
        state = dpg.get_item_state(window)
        if "rect_size" not in state:  # the file dialog reports none (it is modal: `covered` handles it)
            return (0.0, 0.0, 0.0, 0.0)
        (x, y), (w, h) = dpg.get_item_pos(window), state["rect_size"]
        return (x, y, x + w, y + h)

    MINIMAP = (200, 130)

    def _minimap_frame(self) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = self.editor_area()
        w, h = self.MINIMAP
        return x1 - w - 10, y1 - h - 10, x1 - 10, y1 - 10

    def _minimap_scale(self) -> tuple[float, float, float] | None:
        """(scale, model x0, model y0) that fits every node into the minimap."""
        rects = [self.c.node_rect(n) for n in self.c.graph.order]
        if not rects:
            return None
        mx0, my0 = min(r[0] for r in rects), min(r[1] for r in rects)
        mx1, my1 = max(r[0] + r[2] for r in rects), max(r[1] + r[3] for r in rects)
        w, h = self.MINIMAP
        scale = min((w - 10) / max(1.0, mx1 - mx0), (h - 10) / max(1.0, my1 - my0))
        return scale, mx0, my0

    def _draw_minimap(self, pan: tuple[float, float]) -> None:
        """Our own minimap, drawn above the nodes (Dear PyGui's drew node text and images over it);
        a click in it brings that spot to the middle of the canvas."""
        fit = self._minimap_scale()
        if fit is None:
            return
        scale, mx0, my0 = fit
        fx0, fy0, fx1, fy1 = self._minimap_frame()
        dpg.draw_rectangle((fx0, fy0), (fx1, fy1), color=(120, 120, 130, 255), fill=(25, 25, 30, 255), parent=self.drawlist)
        for group in self.c.groups:
            gx, gy, gw, gh = group["rect"]
            dpg.draw_rectangle((fx0 + 5 + (gx - mx0) * scale, fy0 + 5 + (gy - my0) * scale),
                               (fx0 + 5 + (gx + gw - mx0) * scale, fy0 + 5 + (gy + gh - my0) * scale),
                               color=(*group["colour"], 200), parent=self.drawlist)
        for node_id in self.c.graph.order:
            x, y, w, h = self.c.node_rect(node_id)
            colour = STATE_COLOURS.get(self.c.status.get(node_id).state if node_id in self.c.status else IDLE, STATE_COLOURS[IDLE])
            dpg.draw_rectangle((fx0 + 5 + (x - mx0) * scale, fy0 + 5 + (y - my0) * scale),
                               (fx0 + 5 + (x + w - mx0) * scale, fy0 + 5 + (y + h - my0) * scale),
                               color=(160, 160, 170, 255), fill=(*[min(255, v + 40) for v in colour], 255), parent=self.drawlist)
        x0, y0, x1, y1 = self.editor_area()  # the visible part of the canvas
        (vx0, vy0), (vx1, vy1) = (self.vp.to_model(self.to_editor(p)) for p in ((x0, y0), (x1, y1)))
        dpg.draw_rectangle((max(fx0, fx0 + 5 + (vx0 - mx0) * scale), max(fy0, fy0 + 5 + (vy0 - my0) * scale)),
                           (min(fx1, fx0 + 5 + (vx1 - mx0) * scale), min(fy1, fy0 + 5 + (vy1 - my0) * scale)),
                           color=(230, 230, 240, 255), parent=self.drawlist)

    def _minimap_click(self, mouse: list[float]) -> bool:
        fit = self._minimap_scale()
        if fit is None or not _inside(mouse, self._minimap_frame()):
            return False
        scale, mx0, my0 = fit
        fx0, fy0, _, _ = self._minimap_frame()
        target = (mx0 + (mouse[0] - fx0 - 5) / scale, my0 + (mouse[1] - fy0 - 5) / scale)
        x0, y0, x1, y1 = self.editor_area()
        centre = self.to_editor(((x0 + x1) / 2, (y0 + y1) / 2))
        gx, gy = self.vp.to_grid(target)
        self.vp.offset = (self.vp.offset[0] + centre[0] - gx, self.vp.offset[1] + centre[1] - gy)
        self._apply_zoom()
        return True

    # --- queue and gallery panels --------------------------------------------------------------

    def toggle(self, window: int) -> None:
        dpg.configure_item(window, show=not dpg.is_item_shown(window))
        if window == self.gallery_window:
            self.gallery_drawn = -1

    def _draw_queue(self) -> None:
        """One row per entry: what, state, time; cancel; move waiting entries up or down."""
        rows = tuple((e.session_id, e.state, None if e.seconds is None else round(e.seconds, 1)) for e in self.c.queue)
        if rows == self.queue_drawn:
            return
        self.queue_drawn = rows
        dpg.delete_item(self.queue_table, children_only=True)
        if not self.c.queue:
            dpg.add_text("Nothing queued yet: Run (or Run xN) adds entries here.", parent=self.queue_table)
            return
        with dpg.table(parent=self.queue_table, header_row=True, borders_innerH=True, policy=dpg.mvTable_SizingStretchProp):
            for title in ("run", "state", "time", ""):
                dpg.add_table_column(label=title)
            for entry in reversed(self.c.queue):  # newest on top
                with dpg.table_row():
                    dpg.add_text(entry.label)
                    dpg.add_text(entry.state, color=tuple(min(255, v + 110) for v in STATE_COLOURS.get(entry.state, STATE_COLOURS[IDLE])))
                    dpg.add_text("" if entry.seconds is None else f"{entry.seconds:.1f}s")
                    with dpg.group(horizontal=True):
                        if entry.state in ("queued", "running"):
                            dpg.add_button(label="cancel", user_data=entry.session_id, callback=lambda s, a, u: self.c.cancel(u))
                        if entry.state == "queued":
                            dpg.add_button(label="sooner", user_data=entry.session_id, callback=lambda s, a, u: self.c.move_queued(u, -1))
                            dpg.add_button(label="later", user_data=entry.session_id, callback=lambda s, a, u: self.c.move_queued(u, 1))

    def _draw_gallery(self) -> None:
        from .thumbs import image_rgba

        self.gallery_drawn = self.c.gallery_version
        dpg.delete_item(self.gallery_group, children_only=True)
        self.gallery_buttons: dict[str, int] = {}
        items = self.c.gallery[:GALLERY_SHOWN]
        if not items:
            dpg.add_text("No images yet: run a graph that makes one.", parent=self.gallery_group)
        keep = {g.image_name for g in items}
        for name in [n for n in self.gallery_textures if n not in keep]:
            dpg.delete_item(self.gallery_textures.pop(name))
        row = None
        for index, item in enumerate(items):
            texture = self.gallery_textures.get(item.image_name)
            if texture is None:
                image = self.c.load_image(item.image_name)
                if image is None:
                    continue
                width, height, pixels = image_rgba(image, GALLERY_THUMB)
                texture = self.gallery_textures[item.image_name] = dpg.add_static_texture(width, height, pixels, parent=self.textures)
            if index % 4 == 0:
                row = dpg.add_group(horizontal=True, parent=self.gallery_group)
            button = dpg.add_image_button(texture, parent=row, width=GALLERY_THUMB, height=GALLERY_THUMB, user_data=item.image_name,
                                          callback=lambda s, a, u: self.open_image(u))
            with dpg.tooltip(button):
                dpg.add_text(f"{item.image_name}\nfrom node #{item.node_id}\nclick: open large; drag onto the canvas: load_image")
            self.gallery_buttons[item.image_name] = button

    # --- image viewer ------------------------------------------------------------------------

    def open_viewer(self, node_id: str | None) -> None:
        dpg.hide_item(self.node_menu)
        status = self.c.status.get(node_id or "")
        if status is None or not status.image_name:
            self.c.say("This node has no image yet: run the graph first", error=True)
            return
        self.open_image(status.image_name, f"Image: {self.c.label(node_id)}")

    def open_image(self, image_name: str, title: str | None = None) -> None:
        image = self.c.load_image(image_name)
        if image is None:
            return
        width, height, pixels = image_rgba(image, VIEWER)
        dpg.delete_item(self.viewer_group, children_only=True)
        texture = dpg.add_static_texture(width, height, pixels, parent=self.textures)
        dpg.add_image(texture, parent=self.viewer_group)
        dpg.add_text(f"{image_name}  ({image.width}x{image.height})", parent=self.viewer_group)
        if getattr(self, "_viewer_texture", None) is not None:
            dpg.delete_item(self._viewer_texture)  # textures have a fixed size: a new one per image
        self._viewer_texture = texture
        self.viewer_image = image_name
        dpg.configure_item(self.viewer, label=title or f"Image: {image_name}", show=True)
        x0, y0, x1, y1 = self.editor_area()
        dpg.set_item_pos(self.viewer, [int(x1 - VIEWER - 60), int(y0 + 20)])  # over the canvas's right side

    def reveal(self, image_name: str | None) -> None:
        """Show the image's file in the system file manager."""
        path = self.c.image_path(image_name) if image_name else None
        if path is None:
            return
        opener = {"darwin": ["open", "-R", str(path)], "win32": ["explorer", f"/select,{path}"]}.get(
            sys.platform, ["xdg-open", str(path.parent)])
        if shutil.which(opener[0]) is None:
            dpg.set_clipboard_text(str(path))
            self.c.say(f"No file manager found: the path is on the clipboard ({path})")
            return
        subprocess.Popen(opener, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.c.say(f"Revealed {path}")

    def copy_image(self, image_name: str | None) -> None:
        """The image itself on the clipboard where a tool for it exists (xclip, wl-copy, macOS),
        else its path as text."""
        path = self.c.image_path(image_name) if image_name else None
        if path is None:
            return
        for command in (["xclip", "-selection", "clipboard", "-t", "image/png", "-i", str(path)],
                        ["wl-copy", "--type", "image/png"]):
            if shutil.which(command[0]):
                with open(path, "rb") as data:
                    subprocess.Popen(command, stdin=data if command[0] == "wl-copy" else subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                self.c.say(f"Copied the image {path.name} to the clipboard")
                return
        dpg.set_clipboard_text(str(path))
        self.c.say(f"Copied the image's path (install xclip to copy the image itself): {path}")

    def image_to_canvas(self, image_name: str | None) -> None:
        if image_name:
            x0, y0, x1, y1 = self.editor_area()
            self.c.add_image_node(image_name, self.vp.to_model(self.to_editor(((x0 + x1) / 2, (y0 + y1) / 2))))

    def show_help(self) -> None:
        dpg.show_item(self.help_window)
        w, h = dpg.get_viewport_client_width(), dpg.get_viewport_client_height()
        dpg.set_item_pos(self.help_window, [w // 2 - 350, max(40, h // 2 - 280)])


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
        """Give the edits up and go on with what was asked.  Opening a file only asks for one:
        the edits (and their "*") stay until a file is really opened, so a canceled dialog
        loses nothing."""
        dpg.hide_item(self.prompt)
        action, self.pending = self.pending, None
        if action is not None:
            if action != self.ask_open:
                self.c.dirty = False  # quit, another graph: the edits are gone now (so is their recovery file)
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
        self._build_file_dialog()
        labels = {"open": "Open a session (.json) or an image made by invoke-nodes (.png)",
                  "import": "Import a ComfyUI / AUTOMATIC1111 / InvokeAI workflow (.json, .txt) or image (.png)",
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
        elif purpose == "import":
            if self.c.import_file(path) and self.c.import_report is not None:
                dpg.set_value(self.import_text, self.c.import_report.summary())
                dpg.show_item(self.import_window)
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


def _rgb(value: Any) -> list[int]:
    """A colour editor's value (0..1 floats or 0..255) as 0..255 RGB."""
    channels = list(value)[:3]
    scale = 255 if all(v <= 1 for v in channels) else 1
    return [int(round(v * scale)) for v in channels]


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


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

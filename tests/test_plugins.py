"""Node discovery: built-ins, user plugins, broken plugins, declaration checks."""
from __future__ import annotations

import subprocess
import sys
from typing import ClassVar, Literal

import pytest

from nodes.base import REGISTRY, BaseInvocation, InputField, NodeDefinitionError
from nodes.outputs import IntOutput
from services.invoker import Invoker

GOOD_PLUGIN = '''
from typing import ClassVar, Literal
from nodes.base import BaseInvocation, InputField
from nodes.outputs import IntOutput

class Triple(BaseInvocation):
    """Multiply by three."""
    type: Literal["plugin_triple"] = "plugin_triple"
    category: ClassVar[str] = "plugins"
    value: int = InputField(1, description="The number")

    def invoke(self, context) -> IntOutput:
        return IntOutput(value=self.value * 3)
'''

BROKEN_PLUGIN = '''
from typing import Literal
from nodes.base import BaseInvocation
from nodes.outputs import IntOutput

class HalfDone(BaseInvocation):
    type: Literal["plugin_half_done"] = "plugin_half_done"
    def invoke(self, context) -> IntOutput:
        return IntOutput(value=0)

raise ImportError("needs a package that is not installed")
'''


def test_plugins_load_broken_ones_are_reported_and_the_app_goes_on(services):
    folder = services.settings.plugins_dir
    (folder / "triple.py").write_text(GOOD_PLUGIN)
    (folder / "broken.py").write_text(BROKEN_PLUGIN)
    (folder / "_private.py").write_text("raise SystemExit('never imported')")
    invoker = Invoker(services)
    try:
        assert [e.name for e in invoker.plugin_errors] == ["broken"]
        error = invoker.plugin_errors[0]
        assert "ImportError: needs a package that is not installed" in str(error)
        assert "Traceback" in error.traceback and "broken.py" in error.traceback
        assert "plugin_half_done" not in REGISTRY, "a broken plugin leaves no half-registered node"
        session = invoker.create_session()
        session.add_node({"type": "plugin_triple", "value": 5})
        invoker.invoke(session)
        invoker.wait(session.id, 10)
        assert session.results["1"][0].outputs == {"value": 15}
    finally:
        invoker.shutdown()


def test_builtin_nodes_are_all_discovered_with_templates():
    from nodes.discovery import load_builtin_nodes

    registry = load_builtin_nodes()
    expected = {"load_image", "save_image", "show_image", "resize", "crop", "blend", "paste", "integer", "float",
                "string", "boolean", "seed", "random_int", "math", "string_join", "iterate", "collect"}
    assert expected <= set(registry)
    resize = registry["resize"].template()
    assert resize["inputs"]["width"] == {
        "name": "width", "tag": "int", "kind": "int", "required": False, "default": 512,
        "description": "New width", "title": "width", "ge": 1, "le": 16384, "collect": False}
    assert resize["inputs"]["resample"]["choices"] == ["nearest", "bilinear", "bicubic", "lanczos"]
    assert resize["inputs"]["image"]["required"] and resize["inputs"]["image"]["kind"] == "image"
    assert registry["string"].inputs()["value"].kind == "prompt"
    assert registry["seed"].inputs()["seed"].kind == "seed"
    assert resize["outputs"]["image"]["tag"] == "image"


def test_importing_the_engine_does_not_import_torch():
    code = ("import sys; from services.container import Services; from services.invoker import Invoker; "
            "from nodes.discovery import load_builtin_nodes; load_builtin_nodes(); "
            "print('torch' in sys.modules, 'diffusers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize(
    "body, words",
    [
        ('type: Literal["decl_a"] = "decl_a"\n    def invoke(self, context) -> int:\n        return 1', "must be annotated to return"),
        ('type: Literal["decl_b"] = "decl_b"\n    def invoke(self, ctx, extra) -> IntOutput:\n        ...', "invoke must take (self, context)"),
        ('type: Literal["decl_c"] = "decl_c"', "does not define invoke"),
        ('type: str = "decl_d"\n    def invoke(self, context) -> IntOutput:\n        ...', 'declare it as  type: Literal["decl_d"]'),
        ('type: Literal["decl_e"] = "decl_e"\n    x: complex = InputField(1j)\n    def invoke(self, context) -> IntOutput:\n        ...', "field 'x': unsupported field type"),
        ('type: Literal["integer"] = "integer"\n    def invoke(self, context) -> IntOutput:\n        ...', "declared twice"),
    ],
)
def test_declaration_mistakes_fail_at_import_with_the_reason(body, words):
    source = f"class Bad(BaseInvocation):\n    {body}\n"
    namespace = {"BaseInvocation": BaseInvocation, "Literal": Literal, "ClassVar": ClassVar,
                 "InputField": InputField, "IntOutput": IntOutput, "__name__": "decl_test"}
    with pytest.raises(NodeDefinitionError) as caught:
        exec(compile(source, "decl_test", "exec", dont_inherit=True), namespace)
    assert words in str(caught.value)

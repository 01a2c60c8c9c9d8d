"""Invocation base classes.

One pydantic class per node is its execution (``invoke``), its validation, its API schema and
the template the canvas and the CLI build their widgets from.  Nothing here imports torch.

A node::

    class Resize(BaseInvocation):
        \"\"\"Resize an image.\"\"\"
        type: Literal["resize"] = "resize"
        category: ClassVar[str] = "image"
        image: ImageField = InputField(description="Image to resize")
        width: int = InputField(512, ge=1, le=16384)

        def invoke(self, context) -> ImageOutput: ...

The output type comes from ``invoke``'s return annotation.  Registration happens when the class is
created; its declaration is checked then (chaiNNer-style), so a broken node fails at import, not at run.
"""
from __future__ import annotations

import enum
import inspect
import random
import sys
import types
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic_core import PydanticUndefined

if TYPE_CHECKING:
    from .context import InvocationContext

SEED_MAX = 2**32 - 1
RANDOM_SEED = -1  # a seed field holding this is replaced by a concrete random seed when the node is added
RESERVED_FIELDS = frozenset({"id", "type"})


class NodeDefinitionError(TypeError):
    """A node class is declared wrongly (found when its module is imported)."""


# --------------------------------------------------------------------------------------------
# Reference types: what travels along links that is not a plain value.  Each is a small JSON
# object; PIN_TYPES below is the one table that execution, the container, the CLI and the
# canvas read to know how a pin's value is named, where it lives and how it is drawn.


class ImageField(BaseModel):
    """A reference to an image held by the image store."""

    type_tag: ClassVar[str] = "image"
    image_name: str


class LatentsField(BaseModel):
    """A reference to a latents tensor held by the object store (where the node that made it runs),
    with an optional mask that limits where denoising redraws them (set_latent_noise_mask)."""

    type_tag: ClassVar[str] = "latents"
    latents_name: str
    noise_mask: ImageField | None = None


class ConditioningField(BaseModel):
    """A reference to prompt conditioning held by the object store."""

    type_tag: ClassVar[str] = "conditioning"
    conditioning_name: str


class LoRARef(BaseModel):
    """One LoRA of a stack: its model id and how strongly it applies."""

    model_id: str
    weight: float = 1.0


class IPAdapterRef(BaseModel):
    """One IP-Adapter on a UNet: the adapter, the CLIP vision encoder that reads its image, and when it applies."""

    model_id: str
    clip_vision_id: str
    image: ImageField
    weight: float = 1.0
    start: float = 0.0  # fraction of the schedule where it starts / stops applying
    end: float = 1.0


class UNetField(BaseModel):
    """A main model's denoiser with the LoRAs (and IP-Adapters) applied to it while it runs (its base
    weights are never changed)."""

    type_tag: ClassVar[str] = "unet"
    model_id: str
    loras: list[LoRARef] = Field(default_factory=list)
    ip_adapters: list[IPAdapterRef] = Field(default_factory=list)


class ClipField(BaseModel):
    """A main model's text encoder(s), with LoRAs and how many final layers to skip."""

    type_tag: ClassVar[str] = "clip"
    model_id: str
    loras: list[LoRARef] = Field(default_factory=list)
    skip: int = 0


class VAEField(BaseModel):
    """A VAE: a main model's own (a main model id) or a separate one (a vae model id)."""

    type_tag: ClassVar[str] = "vae"
    model_id: str


class ControlNetField(BaseModel):
    """A ControlNet (by model id): controlnet_apply attaches it to conditioning."""

    type_tag: ClassVar[str] = "control_model"
    model_id: str


class T2IAdapterField(BaseModel):
    """A T2I-Adapter (by model id): t2i_adapter_apply attaches it to conditioning."""

    type_tag: ClassVar[str] = "t2i_adapter"
    model_id: str


@dataclass(frozen=True)
class PinType:
    """A reference pin type.  key: the field a bare text fills (the CLI's `--image NAME`);
    store: where the value it names is held ("images", "objects"), None for a model description
    that names nothing stored; colour: the canvas's pin and link colour."""

    field: type[BaseModel]
    key: str
    store: str | None
    colour: tuple[int, int, int]

    @property
    def tag(self) -> str:
        return self.field.type_tag  # type: ignore[attr-defined]


PIN_TYPES: dict[str, PinType] = {p.tag: p for p in (
    PinType(ImageField, "image_name", "images", (197, 134, 192)),
    PinType(LatentsField, "latents_name", "objects", (230, 190, 70)),
    PinType(ConditioningField, "conditioning_name", "objects", (120, 200, 90)),
    PinType(UNetField, "model_id", None, (110, 150, 240)),
    PinType(ClipField, "model_id", None, (240, 210, 110)),
    PinType(VAEField, "model_id", None, (235, 100, 100)),
    PinType(ControlNetField, "model_id", None, (90, 215, 215)),
    PinType(T2IAdapterField, "model_id", None, (175, 120, 240)),
)}
STORED_TAGS = frozenset(tag for tag, pin in PIN_TYPES.items() if pin.store is not None)


# --------------------------------------------------------------------------------------------
# Field declaration helpers


def InputField(
    default: Any = PydanticUndefined,
    *,
    description: str | None = None,
    kind: str | None = None,
    ge: float | None = None,
    le: float | None = None,
    multiple_of: float | None = None,
    model_kind: str | None = None,
    collect: bool = False,
    title: str | None = None,
    default_factory: Any = None,
) -> Any:
    """Declare a node input.

    kind: widget kind when the type alone does not say it ("prompt" for multiline text,
    "seed", "path", "model").  A model input is a `str` holding a model id with kind="model" and
    model_kind naming which models it lists ("main", "vae", "upscaler", "face_restore").  collect: the input takes any number of links, gathered into a list.
    """
    extra: dict[str, Any] = {}
    if kind:
        extra["kind"] = kind
    if model_kind:
        extra["model_kind"] = model_kind
    if collect:
        extra["collect"] = True
    if default_factory is not None:
        return Field(default_factory=default_factory, description=description, title=title, json_schema_extra=extra or None)
    return Field(
        default,
        description=description,
        ge=ge,
        le=le,
        multiple_of=multiple_of,
        title=title,
        json_schema_extra=extra or None,
    )


def SeedField(description: str = "Noise seed; -1 picks a random seed when the node is added") -> Any:
    return InputField(RANDOM_SEED, description=description, kind="seed", ge=RANDOM_SEED, le=SEED_MAX)


def OutputField(*, description: str | None = None) -> Any:
    return Field(description=description)


def random_seed() -> int:
    return random.randint(0, SEED_MAX)


# --------------------------------------------------------------------------------------------
# Types of pins: tags, widget kinds and link compatibility


def _strip(annotation: Any) -> tuple[Any, bool]:
    """Remove Annotated[...] and Optional[...]; return (type, optional)."""
    optional = False
    while True:
        origin = get_origin(annotation)
        if origin is typing.Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            optional = optional or len(args) < len(get_args(annotation))
            if len(args) != 1:
                return Any, optional  # a real union: accept anything, pydantic validates at run time
            annotation = args[0]
        else:
            return annotation, optional


def type_tag(annotation: Any) -> str:
    """The pin type of an annotation: int, float, bool, str, image, latents, ..., list[T], any."""
    annotation, _ = _strip(annotation)
    if annotation is Any or annotation is object:
        return "any"
    if annotation in (int, float, bool, str):
        return annotation.__name__
    origin = get_origin(annotation)
    if origin is Literal:
        values = get_args(annotation)
        return "int" if all(isinstance(v, int) and not isinstance(v, bool) for v in values) else "str"
    if origin in (list, tuple) or annotation in (list, tuple):
        args = get_args(annotation)
        return f"list[{type_tag(args[0]) if args else 'any'}]"
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return "str"
        tag = getattr(annotation, "type_tag", None)
        if isinstance(tag, str):
            return tag
    raise NodeDefinitionError(f"unsupported field type {annotation!r}")


def with_article(word: str) -> str:
    """'a vae', 'an upscaler': for messages that name a kind of thing."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def list_item_tag(tag: str) -> str | None:
    return tag[5:-1] if tag.startswith("list[") else None


def is_compatible(source: str, target: str) -> bool:
    """Can an output of tag `source` feed an input of tag `target`?

    Same tag; int widens to float; `any` matches everything (pydantic checks the value at run
    time); lists are compatible when their items are.  A single T does not feed list[T]:
    gather it with a collect node.
    """
    if source == target or source == "any" or target == "any":
        return True
    if source == "int" and target == "float":
        return True
    src_item, dst_item = list_item_tag(source), list_item_tag(target)
    if src_item is not None and dst_item is not None:
        return is_compatible(src_item, dst_item)
    return False


@dataclass(frozen=True)
class Port:
    """Everything an app needs to know about one input or output field."""

    name: str
    tag: str  # link type, see type_tag()
    kind: str  # widget kind: int float bool str prompt enum seed image latents conditioning model list any
    required: bool
    default: Any
    description: str
    title: str
    choices: tuple[Any, ...] | None = None
    ge: float | None = None
    le: float | None = None
    multiple_of: float | None = None
    model_kind: str | None = None
    collect: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items() if v is not None}
        if self.default is None and not self.required:
            data["default"] = None
        return data


def _port(name: str, info: Any, output: bool = False) -> Port:
    annotation = info.annotation
    try:
        tag = type_tag(annotation)
    except NodeDefinitionError as exc:
        raise NodeDefinitionError(f"field '{name}': {exc}") from None
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    bare, _ = _strip(annotation)
    choices = None
    if get_origin(bare) is Literal:
        choices = get_args(bare)
    elif isinstance(bare, type) and issubclass(bare, enum.Enum):
        choices = tuple(m.value for m in bare)
    kind = extra.get("kind")
    if kind is None:
        if choices is not None:
            kind = "enum"
        elif list_item_tag(tag) is not None:
            kind = "list"
        else:
            kind = tag
    bounds: dict[str, Any] = {}
    for meta in info.metadata:
        for attr in ("ge", "le", "multiple_of"):
            value = getattr(meta, attr, None)
            if value is not None:
                bounds[attr] = value
        if getattr(meta, "gt", None) is not None:
            bounds["ge"] = meta.gt
        if getattr(meta, "lt", None) is not None:
            bounds["le"] = meta.lt
    default = None if info.default is PydanticUndefined else info.default
    if isinstance(default, BaseModel):
        default = default.model_dump(mode="json")
    elif isinstance(default, enum.Enum):
        default = default.value
    return Port(
        name=name,
        tag=tag,
        kind=kind,
        required=False if output else info.is_required(),
        default=default,
        description=info.description or "",
        title=info.title or name.replace("_", " "),
        choices=choices,
        model_kind=extra.get("model_kind"),
        collect=bool(extra.get("collect")),
        **bounds,
    )


class CanceledError(Exception):
    """Raised inside a node when its session was canceled."""


class NodeInputError(ValueError):
    """Raised by invoke() for an input value it cannot use; the error shown names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# --------------------------------------------------------------------------------------------
# Outputs and invocations


class BaseInvocationOutput(BaseModel):
    """Base of every node's output model: its fields are the node's output pins."""

    model_config = ConfigDict(extra="forbid")
    _ports: ClassVar[dict[str, Port]]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        try:
            cls._ports = {n: _port(n, f, output=True) for n, f in cls.model_fields.items()}
        except NodeDefinitionError as exc:
            raise NodeDefinitionError(f"output {cls.__name__}: {exc}") from None

    @classmethod
    def ports(cls) -> dict[str, Port]:
        return cls._ports


REGISTRY: dict[str, type["BaseInvocation"]] = {}


class BaseInvocation(BaseModel):
    """Base of every node.  Subclasses declare `type`, their input fields and `invoke`."""

    model_config = ConfigDict(extra="forbid", validate_default=False)

    id: str = Field("", description="Node id inside its session", json_schema_extra={"ui_hidden": True})

    # Class-level declarations (not fields)
    version: ClassVar[str] = "1.0.0"
    category: ClassVar[str] = "misc"
    tags: ClassVar[tuple[str, ...]] = ()
    fans_out: ClassVar[bool] = False  # invoke() returns a list: downstream nodes run once per item
    cacheable: ClassVar[bool] = True
    # Runs in the AI worker process when the app has one: the node imports torch (or another
    # library that must stay out of the GUI process) or loads models.
    runs_in_worker: ClassVar[bool] = False

    node_type: ClassVar[str]
    output_class: ClassVar[type[BaseInvocationOutput]]
    _input_ports: ClassVar[dict[str, Port]]
    _adapters: ClassVar[dict[str, TypeAdapter]]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        type_field = cls.model_fields.get("type")
        node_type = type_field.default if type_field is not None else None
        if not isinstance(node_type, str):
            return  # an abstract intermediate class: nothing to register
        try:
            cls._declare(node_type)
        except NodeDefinitionError as exc:
            raise NodeDefinitionError(f"node '{node_type}' ({cls.__module__}.{cls.__name__}): {exc}") from None
        if node_type in REGISTRY and REGISTRY[node_type].__qualname__ != cls.__qualname__:
            other = REGISTRY[node_type]
            raise NodeDefinitionError(
                f"node type '{node_type}' is declared twice: {other.__module__}.{other.__name__} "
                f"and {cls.__module__}.{cls.__name__}"
            )
        REGISTRY[node_type] = cls

    @classmethod
    def _declare(cls, node_type: str) -> None:
        if get_args(cls.model_fields["type"].annotation) != (node_type,):
            raise NodeDefinitionError(f'declare it as  type: Literal["{node_type}"] = "{node_type}"')
        if cls.invoke is BaseInvocation.invoke:
            raise NodeDefinitionError("it does not define invoke(self, context)")
        params = list(inspect.signature(cls.invoke).parameters)
        if params != ["self", "context"]:
            raise NodeDefinitionError(f"invoke must take (self, context), not ({', '.join(params)})")
        try:
            module = sys.modules.get(cls.__module__)
            hints = typing.get_type_hints(cls.invoke, getattr(module, "__dict__", None))
        except Exception as exc:  # a name in the annotation that does not resolve
            raise NodeDefinitionError(f"cannot read invoke()'s return annotation: {exc}") from None
        output = hints.get("return")
        if cls.fans_out:
            if get_origin(output) is not list:
                raise NodeDefinitionError("a fans_out node's invoke must return list[SomeOutput]")
            output = get_args(output)[0]
        if not (isinstance(output, type) and issubclass(output, BaseInvocationOutput)):
            raise NodeDefinitionError("invoke() must be annotated to return a BaseInvocationOutput subclass")
        cls.node_type = node_type
        cls.output_class = output
        ports = {}
        for name, info in cls.model_fields.items():
            if name not in RESERVED_FIELDS:
                ports[name] = _port(name, info)
        cls._input_ports = ports
        cls._adapters = {}

    # --- metadata for apps ------------------------------------------------------------------

    @classmethod
    def inputs(cls) -> dict[str, Port]:
        return cls._input_ports

    @classmethod
    def outputs(cls) -> dict[str, Port]:
        return cls.output_class.ports()

    @classmethod
    def title(cls) -> str:
        return cls.node_type.replace("_", " ")

    @classmethod
    def description(cls) -> str:
        doc = inspect.getdoc(cls) or ""
        return doc.strip().split("\n\n")[0].replace("\n", " ")

    @classmethod
    def template(cls) -> dict[str, Any]:
        """A JSON-able description of the node for UIs and the API."""
        return {
            "type": cls.node_type,
            "title": cls.title(),
            "description": cls.description(),
            "category": cls.category,
            "version": cls.version,
            "tags": list(cls.tags),
            "fans_out": cls.fans_out,
            "inputs": {n: p.to_dict() for n, p in cls.inputs().items()},
            "outputs": {n: p.to_dict() for n, p in cls.outputs().items()},
        }

    @classmethod
    def validate_value(cls, field: str, value: Any) -> Any:
        """Validate one input value on its own (used at add time, before links are filled in)."""
        adapter = cls._adapters.get(field)
        if adapter is None:
            info = cls.model_fields[field]
            annotation = typing.Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            adapter = TypeAdapter(annotation)
            cls._adapters[field] = adapter
        return adapter.validate_python(value)

    @classmethod
    def infer_output_tags(cls, input_tags: dict[str, str]) -> dict[str, str]:
        """Narrow `any` outputs from the tags of linked inputs (iterate/collect use this)."""
        return {}

    @classmethod
    def migrate(cls, values: dict[str, Any], from_version: str) -> dict[str, Any]:
        """Turn values saved by an older version of this node into current ones.

        The default knows no migration; override it when a new version changes fields.
        """
        raise ValueError(
            f"saved with version {from_version}, installed version is {cls.version} and it has no migration"
        )

    def cache_salt(self) -> Any:
        """Extra data that makes the cached output stale (e.g. a source file's mtime)."""
        return None

    def invoke(self, context: "InvocationContext") -> BaseInvocationOutput:  # pragma: no cover
        raise NotImplementedError


def get_node_class(node_type: str) -> type[BaseInvocation]:
    try:
        return REGISTRY[node_type]
    except KeyError:
        raise KeyError(node_type) from None

"""What a stylization method is: its declared options and needs, the registry, the style lookup.

A method is one module with one ``Method`` subclass decorated with ``@register``. It declares

* ``options``: each an ``Option`` (name, type, default, help, choices or a check). The render
  config, the CLI flags (``--name``; ``--no-name`` for a flag that is on by default), the
  validation of values from the CLI, a Prefect deployment or job.json, and the report are all
  derived from these declarations;
* what it needs: ``needs_flow`` (the render computes or reads optical flow for it),
  ``carries_state`` (chunks of a shot form a chain; False lets them run in parallel),
  ``style_input`` (a ``checkpoint`` or a style ``image``), ``checkpoint_folder`` (shipped
  styles keep this method's nets in ``models/weights/FOLDER/NAME.safetensors``).

Every constructor takes the style's file, a ``RunSettings`` (device, precision, frames per call,
stroke scale) and its validated options. Nothing here knows a particular method.
"""
from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from pipeline.carry import CarryState, FlowSource
from pipeline.errors import InputError

_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


@dataclass(frozen=True)
class Option:
    """One option of a method. ``check`` returns True for a good value; ``rule`` says what it wants."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple = ()
    check: Callable[[Any], bool] | None = None
    rule: str = ""

    @property
    def flag(self) -> str:
        dashed = self.name.replace("_", "-")
        return f"--no-{dashed}" if self.type is bool and self.default else f"--{dashed}"

    def parse(self, value: Any, method: str) -> Any:
        """``value`` (from the CLI, JSON or Python) as this option's type, validated; else InputError."""
        what = f"{method} option {self.name}"
        try:
            if self.type is bool:
                if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                    value = value.lower() in _TRUE
                elif not isinstance(value, (bool, np.bool_)):
                    raise ValueError
                value = bool(value)
            elif self.type in (int, float):
                if isinstance(value, bool) or (self.type is int and isinstance(value, float)
                                               and not value.is_integer()):
                    raise ValueError
                value = self.type(value)
            else:
                value = self.type(value)
        except (TypeError, ValueError):
            raise InputError(f"{what}: {value!r} is not a {self.type.__name__}") from None
        if self.choices and value not in self.choices:
            raise InputError(f"{what} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
        if self.check is not None and not self.check(value):
            raise InputError(f"{what} must be {self.rule}, got {value!r}")
        return value


@dataclass(frozen=True)
class RunSettings:
    """How a method runs its nets; the same for every method."""

    device: str = "cpu"
    precision: str = "fp32"
    batch: int = 1
    style_scale: float = 1.0
    exposure: str = "follow"  # pipeline.exposure: follow the source's exposure, or "net": the net's own level


class Method(ABC):
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for --help and the docs
    options: ClassVar[tuple[Option, ...]] = ()
    needs_flow: ClassVar[bool] = False
    carries_state: ClassVar[bool] = True
    style_input: ClassVar[str] = "checkpoint"  # or "image"
    checkpoint_folder: ClassVar[str | None] = None
    # how a user makes the net a shipped style lacks ({style}: its name, {init}: its per-frame net)
    train_command: ClassVar[str] = "filmstyle train --video --init {init} --out OUT.safetensors"
    # True: stylize also takes uint16 frames (a source deeper than 8 bits for a deeper delivery) and
    # returns uint16; False: it is given 8-bit frames whatever the source
    deep_frames: ClassVar[bool] = False

    @abstractmethod
    def __init__(self, style_path: str | Path, run: RunSettings, **options):
        ...

    @property
    @abstractmethod
    def card(self) -> dict:
        """The model card of the net(s) it runs (reported with the render)."""

    @abstractmethod
    def params(self) -> dict:
        """Everything that changes the output (method, model hash, options): keys the render's work."""

    @abstractmethod
    def stylize(self, frames: np.ndarray, first_index: int, state: CarryState | None,
                flow: FlowSource | None = None) -> tuple[np.ndarray, CarryState]:
        """Stylize a chunk of one shot; ``state`` is the previous chunk's carry-out (None at a cut)."""


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``--method cls.name``.

    An option name shared by two methods must mean the same thing (one CLI flag serves both).
    """
    if not cls.name:
        raise TypeError(f"{cls.__qualname__} has no name")
    for other in METHODS.values():
        if other is cls or other.name == cls.name:
            continue
        for mine in cls.options:
            theirs = next((o for o in other.options if o.name == mine.name), None)
            if theirs is not None and (theirs.type, theirs.default, theirs.choices) != \
                    (mine.type, mine.default, mine.choices):
                raise TypeError(f"option {mine.name} of {cls.name} differs from {other.name}'s")
    METHODS[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    METHODS.pop(name, None)


def method_class(name: str, module: str | None = None) -> type[Method]:
    """The registered method ``name``; ``module`` (where it was defined) is imported first when the
    name is not registered in this process yet (a worker rendering a plug-in method)."""
    why = ""
    if name not in METHODS and module:
        try:
            importlib.import_module(module)
        except ImportError as e:  # a plug-in must be installed (importable) on every node
            why = f" (it is defined in {module}, which this node cannot import: {e})"
    try:
        return METHODS[name]
    except KeyError:
        raise InputError(f"unknown method {name!r}{why}; available: {', '.join(sorted(METHODS))}") from None


PLUGIN_ENV = "FILMSTYLE_METHODS"
PLUGIN_GROUP = "filmstyle.methods"


def load_plugins() -> list[str]:
    """Import the method plug-ins: the modules named in $FILMSTYLE_METHODS (comma-separated) and
    the ``filmstyle.methods`` entry points of installed packages. Each registers its methods on
    import. Returns the modules imported; one that fails to import is an InputError."""
    from importlib.metadata import entry_points

    names = [m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(",") if m.strip()]
    names += [ep.value.split(":")[0] for ep in entry_points(group=PLUGIN_GROUP)]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise InputError(f"method plug-in {name} cannot be imported: {e}") from None
    return names


def all_options() -> dict[str, Option]:
    """Every registered method's options by name (one entry per shared name)."""
    out: dict[str, Option] = {}
    for cls in METHODS.values():
        for o in cls.options:
            out.setdefault(o.name, o)
    return out


def validate_options(method: str, options: dict | None, *, module: str | None = None) -> dict:
    """The method's options with defaults filled in and every value checked; unknown names fail."""
    cls = method_class(method, module)
    given = dict(options or {})
    own = {o.name: o for o in cls.options}
    unknown = sorted(set(given) - set(own))
    if unknown:
        takes = ", ".join(own) or "none"
        raise InputError(f"method {method} has no option {', '.join(unknown)} (it takes: {takes})")
    return {name: (o.parse(given[name], method) if name in given else o.default) for name, o in own.items()}


def make_method(name: str, style_path: str | Path, run: RunSettings | None = None, options: dict | None = None,
                *, module: str | None = None) -> Method:
    """Build method ``name`` for the style at ``style_path`` (see ``resolve_style``)."""
    from pipeline.exposure import EXPOSURES

    cls = method_class(name, module)
    run = run or RunSettings()
    if run.exposure not in EXPOSURES:
        raise InputError(f"unknown exposure {run.exposure!r} (choose {' or '.join(EXPOSURES)})")
    method = cls(style_path, run, **validate_options(name, options, module=module))
    blind = getattr(method, "exposure_blind", False)
    return FollowExposure(method) if run.exposure == "follow" and blind else method


class FollowExposure:
    """A method whose net cannot see exposure (``exposure_blind``), its frames given their source's
    (pipeline.exposure) outside the method: what a flow method carries to the next frame (its net's
    own output) is left as it is. Everything else is the wrapped method's (``inner``)."""

    def __init__(self, inner: Method):
        self.inner = inner

    def __getattr__(self, name: str):
        if name == "inner":  # not set yet (a copy being unpickled): no endless lookup
            raise AttributeError(name)
        return getattr(self.inner, name)

    def params(self) -> dict:
        return {**self.inner.params(), "exposure": "follow"}

    def stylize(self, frames, first_index, state, flow=None):
        from pipeline.exposure import follow_exposure

        out, state = self.inner.stylize(frames, first_index, state, flow=flow)
        return follow_exposure(out, frames), state


def resolve_style(name_or_path: str, method: str = "per-frame", *, module: str | None = None) -> Path:
    """What ``--style`` names, as the file ``method`` takes: a shipped style's net (its variant for
    methods with their own nets), a checkpoint path, or for image methods a style image path."""
    from models.checkpoint import shipped_styles, shipped_variant

    cls = method_class(method, module)
    if cls.style_input == "image":
        p = Path(name_or_path)
        if not p.is_file():
            raise InputError(f"{name_or_path}: style image not found (method {method} takes a painting)")
        return p
    styles = shipped_styles()
    if name_or_path in styles:
        if cls.checkpoint_folder is None:
            return styles[name_or_path]
        variant = shipped_variant(name_or_path, cls.checkpoint_folder)
        if variant is None:
            have = [n for n in styles if shipped_variant(n, cls.checkpoint_folder)]
            raise InputError(f"style {name_or_path!r} has no {method} model shipped"
                             + (f" (styles with one: {', '.join(have)})" if have else "")
                             + "; train one with '"
                             + cls.train_command.format(style=name_or_path, init=styles[name_or_path])
                             + "' and pass its path")
        return variant
    p = Path(name_or_path)
    if p.suffix or os.sep in name_or_path:
        if not p.is_file():
            raise InputError(f"{name_or_path}: style checkpoint not found")
        return p
    available = ", ".join(styles) or "none shipped yet"
    raise InputError(f"unknown style {name_or_path!r}; available styles: {available} (or pass a .safetensors path)")


def shipped_methods(style: str) -> dict[str, Path]:
    """Method -> checkpoint for the methods with their own nets that shipped style ``style`` has."""
    from models.checkpoint import shipped_variant

    out = {}
    for name, cls in sorted(METHODS.items()):
        if cls.checkpoint_folder and (p := shipped_variant(style, cls.checkpoint_folder)):
            out[name] = p
    return out

"""Stylization methods as plug-ins: each module registers one ``Method`` (see ``methods.base``).

Importing this package registers the built-in methods. A new method is one new module with one
``@register``-ed class (and its test); the render config, CLI flags, validation, the shipped-net
lookup and the report follow from its declarations.
"""
from .base import (METHODS, Method, Option, RunSettings, all_options, load_plugins, make_method, method_class,
                   register, resolve_style, shipped_methods, unregister, validate_options)
from .net import NetMethod, NetRunner, configure_threads

def _import_builtins() -> None:
    """Every other module of this package is a method that registers itself on import."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name not in ("base", "net"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_builtins()

__all__ = ["METHODS", "Method", "NetMethod", "NetRunner", "Option", "RunSettings", "all_options",
           "configure_threads", "load_plugins", "make_method", "method_class", "register", "resolve_style",
           "shipped_methods", "unregister", "validate_options"]

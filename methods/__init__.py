"""Stylization methods as plug-ins: each module registers one ``Method`` (see ``methods.base``).

Importing this package registers the built-in methods. A new method is one new module with one
``@register``-ed class (and its test); the render config, CLI flags, validation, the shipped-net
lookup and the report follow from its declarations.
"""
from .base import (METHODS, Method, Option, RunSettings, all_options, load_plugins, make_method, method_class,
                   register, resolve_style, shipped_methods, unregister, validate_options)
from .net import NetMethod, NetRunner, configure_threads
from . import flow_blend, flow_recurrent, per_frame  # noqa: E402,F401  (built-ins register themselves)

__all__ = ["METHODS", "Method", "NetMethod", "NetRunner", "Option", "RunSettings", "all_options",
           "configure_threads", "load_plugins", "make_method", "method_class", "register", "resolve_style",
           "shipped_methods", "unregister", "validate_options"]

"""The ``filmstyle`` command line: parsers and commands on top of the engine, methods and models."""

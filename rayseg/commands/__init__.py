"""The user commands, one module each: config -> library calls, above the library (Ray allowed here).

``rayseg.cli`` is a table of these. Each module has ``add_arguments(parser)`` and ``run(args) -> exit code``;
expected failures raise ``ConfigError`` (exit 2) or a one-line library error (exit 1), printed by the CLI.
"""

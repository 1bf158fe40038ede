"""The errors every layer raises for bad user input; this module imports nothing.

The CLI turns any :class:`InputError` into one line (``niwt <stage>: error: ...``, exit 2) instead of
a traceback. It lives apart from the params schema so that a module that only needs to raise an
error (the core, a stage) does not carry the schema, the YAML loader or the method registry into
its DVC lineage.
"""


class InputError(ValueError):
    """A problem with the user's input (params, data, checkpoints, files) that the CLI reports in one
    line instead of a traceback. Every such error derives from it."""


class ParamsError(InputError):
    """A params file that does not match the schema (unknown key, wrong type, bad value)."""

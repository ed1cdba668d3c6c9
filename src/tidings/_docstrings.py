"""Field docstrings of msgspec Structs, read from the source.

Python keeps no docstring of a class attribute at run time, but the options and
the server API's types document each field with the string right under it. The
OpenAPI document and ``tidings gen-config`` show those; this reads them.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap

from msgspec import Struct

__all__ = ["field_docs"]


@functools.cache
def field_docs(kind: type[Struct]) -> dict[str, str]:
    """Field name -> the docstring under the field, in ``kind`` and the Structs it extends
    (none when the source is not available)."""
    docs: dict[str, str] = {}
    for cls in reversed(kind.__mro__):  # a subclass's docstring wins
        if not (issubclass(cls, Struct) and cls is not Struct):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):
            continue
        (node,) = ast.parse(source).body
        assert isinstance(node, ast.ClassDef)
        for field, after in zip(node.body, node.body[1:], strict=False):
            if (
                isinstance(field, ast.AnnAssign)
                and isinstance(field.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[field.target.id] = inspect.cleandoc(after.value.value)
    return docs

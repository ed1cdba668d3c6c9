"""Build-time pages of the documentation site (``hooks:`` in ``mkdocs.yml``).

The reference pages are written from the code at each build, never committed, so they
cannot drift from it:

- ``reference/options.md`` from the option types (``tidings.options``: msgspec Structs for
  types, defaults and bounds; griffe for the field docstrings);
- ``reference/server-api.md`` from the OpenAPI document the API port serves
  (``tidings.api.http.openapi()``);
- ``reference/cli.md`` from the argparse parser of ``tidings`` (``tidings.app.cli._parser()``).

Files that live elsewhere in the repository (the benchmark report and its charts, the soak
test's README) are mounted into the site, and a link written relative to a page's place in
the repository (as GitHub reads it) is rewritten to where its target is in the site.
"""

from __future__ import annotations

import argparse
import posixpath
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import griffe
import msgspec
import msgspec.inspect as mi
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parent.parent
DOCS = "docs"


def _mounts() -> dict[str, str]:
    """Repository path -> site path of the files brought in from outside ``docs/``."""
    mounts = {
        "bench/results/REPORT.md": "explanation/benchmarks/report.md",
        "bench/results/MISSES.md": "explanation/benchmarks/misses.md",
        "soak/README.md": "explanation/soak.md",
    }
    for chart in sorted((ROOT / "bench/results").glob("*.png")):
        mounts[f"bench/results/{chart.name}"] = f"explanation/benchmarks/{chart.name}"
    mounts["bench/results/profile-fanout.svg"] = "explanation/benchmarks/profile-fanout.svg"
    # Downloadable from the monitoring guide.
    mounts["monitoring/grafana/tidings.json"] = "how-to/tidings-grafana.json"
    return {repo: site for repo, site in mounts.items() if (ROOT / repo).is_file()}


MOUNTS = _mounts()
SOURCES = {site: repo for repo, site in MOUNTS.items()}


# --- mkdocs events -----------------------------------------------------------------------


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for src_uri, write in GENERATED.items():
        files.append(File.generated(config, src_uri, content=write()))
    for repo_path, site_path in MOUNTS.items():
        files.append(File.generated(config, site_path, abs_src_path=str(ROOT / repo_path)))
    return files


_LINK = re.compile(r"(\]\()([^)\s#]+)([^)]*\))")


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Point links to repository files that the site mounts at their place in the site."""
    src_uri = page.file.src_uri
    repo_dir = posixpath.dirname(SOURCES.get(src_uri, f"{DOCS}/{src_uri}"))

    def rewrite(match: re.Match[str]) -> str:
        target = match.group(2)
        if "://" in target or target.startswith(("/", "mailto:")):
            return match.group(0)
        site_path = MOUNTS.get(posixpath.normpath(posixpath.join(repo_dir, target)))
        if site_path is None:
            return match.group(0)  # a docs/ file, or a missing one that validation reports
        relative = posixpath.relpath(site_path, posixpath.dirname(src_uri) or ".")
        return f"{match.group(1)}{relative}{match.group(3)}"

    return _LINK.sub(rewrite, markdown)


# --- reference/options.md ----------------------------------------------------------------

# The sections of the configuration file, in the order of the page: (dotted prefix, type
# name in tidings.options, heading). Channel options sit at the top level of the file (and
# in each [namespaces.NAME] table), hence no prefix.
_SECTIONS = (
    ("", "Config", "Top level"),
    ("", "ChannelOptions", "Channel options: top level and `[namespaces.NAME]`"),
    ("client.", "ClientOptions", "`[client]`"),
    ("http_api.", "HTTPAPIOptions", "`[http_api]`"),
    ("broker.", "BrokerOptions", "`[broker]`"),
    ("proxy.", "ProxyOptions", "`[proxy]`"),
    ("admin.", "AdminOptions", "`[admin]`"),
)
_ALIASES = ("Seconds", "Delay", "Positive", "Limit", "Rate", "Port")
_BOUND_SIGNS = (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"))


def options_page() -> str:
    from tidings import options

    module = griffe.load("tidings.options", search_paths=[str(ROOT / "src")])
    lines = [
        "# Options",
        "",
        "Every option of the configuration, generated from its type in",
        "`tidings/options.py` at each build of this site.",
        "",
        "Precedence: defaults < the config file (`--config`: TOML, JSON or YAML) < environment",
        "< command-line flags. Any option except those under `namespaces` can be set from the",
        "environment as",
        "`TIDINGS_` + its dotted name in capitals with `_` for `.` (`client.ping_interval`:",
        "`TIDINGS_CLIENT_PING_INTERVAL`). A value out of bounds, or an unknown name, stops",
        "the hub at start with a message naming the option.",
        "",
        "Types named in the tables:",
        "",
    ]
    for alias in _ALIASES:
        lines.append(f"- `{alias}`: {_one_line(_docstring(module, alias) or '')}")
    for prefix, type_name, heading in _SECTIONS:
        struct = getattr(options, type_name)
        info = mi.type_info(struct)
        assert isinstance(info, mi.StructType)
        doc = _docstring(module, type_name)
        lines += ["", f"## {heading}", "", _markdown(doc or ""), ""]
        lines += ["| option | type | default | bounds | description |", "|---|---|---|---|---|"]
        for field in info.fields:
            if isinstance(_unwrap(field.type), mi.StructType) and field.name != "namespaces":
                continue  # a table of its own, with its own section
            member = module.members[type_name].members[field.name]
            cells = [
                f"`{prefix}{field.name}`",
                _type_name(field.type, member),
                _default(field),
                _bounds(field.type),
                _one_line(_docstring(module, f"{type_name}.{field.name}") or ""),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _docstring(module: griffe.Object | griffe.Alias, path: str) -> str | None:
    obj: Any = module
    for name in path.split("."):
        obj = obj.members[name]
    return obj.docstring.value if obj.docstring else None


_ROLE = re.compile(r":\w+:`~?([^`]+)`")
"""A Sphinx cross-reference in a docstring (``:func:`load_config```): shown as code."""


def _markdown(text: str) -> str:
    return _ROLE.sub(r"`\1`", text)


def _one_line(text: str) -> str:
    return _markdown(" ".join(text.split())).replace("|", "\\|")


def _unwrap(kind: mi.Type) -> mi.Type:
    return kind.type if isinstance(kind, mi.Metadata) else kind


def _type_name(kind: mi.Type, member: Any) -> str:
    kind = _unwrap(kind)
    names: dict[type[mi.Type], str] = {
        mi.BoolType: "bool",
        mi.IntType: "int",
        mi.FloatType: "float",
        mi.StrType: "string",
    }
    if isinstance(kind, mi.ListType):
        base = f"list of {names[type(_unwrap(kind.item_type))]}"
    elif isinstance(kind, mi.DictType):
        base = "tables by name"
    else:
        base = names[type(kind)]
    alias = str(member.annotation)
    return f"{base} (`{alias}`)" if alias in _ALIASES else base


def _default(field: mi.Field) -> str:
    from tidings.app.config import toml_value

    value = field.default if field.default_factory is msgspec.NODEFAULT else field.default_factory()
    if isinstance(value, msgspec.Struct):
        return ""
    return f"`{toml_value(value)}`"


def _bounds(kind: mi.Type) -> str:
    kind = _unwrap(kind)
    found = [
        f"{sign} {getattr(kind, name):g}"
        for name, sign in _BOUND_SIGNS
        if getattr(kind, name, None) is not None
    ]
    return ", ".join(found)


# --- reference/server-api.md -------------------------------------------------------------


def server_api_page() -> str:
    from tidings.api.http import openapi

    document = openapi()
    schemas: dict[str, Any] = document["components"]["schemas"]
    lines = [
        "# Server API",
        "",
        f"Generated from the OpenAPI {document['openapi']} document of "
        f"*{document['info']['title']}* {document['info']['version']}, which the API port",
        "also serves at `GET /api/openapi.json`.",
        "",
        "Each method is `POST /api/<method>` with a JSON object as its body, on the API port",
        '(`http_api.port`, 9000 by default). The answer is HTTP 200 with `{"result": ...}`',
        'or `{"error": {"code": ..., "message": ...}}`; a body that is not JSON gets 400',
        "and a missing or wrong API key 401.",
        "",
    ]
    for scheme in document["components"].get("securitySchemes", {}).values():
        lines += [
            f"Authentication: the API key in the `{scheme['name']}` {scheme['in']}"
            " (`Authorization: apikey <key>` and `?api_key=` work too).",
            "",
        ]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            lines += ["", f"## `{operation['operationId']}`", "", f"`{method.upper()} {path}`", ""]
            if "description" in operation:
                lines += [operation["description"], ""]
            request = operation["requestBody"]["content"]["application/json"]["schema"]
            lines += ["**Request**", "", *_fields_table(request, schemas), ""]
            lines += ["**Responses**", ""]
            for status, response in operation["responses"].items():
                lines.append(f"- `{status}`: {response['description']}")
            answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
            lines += ["", "**Answer (200)**", "", *_fields_table(answer, schemas)]
    lines += ["", "## Types", "", "Objects the methods' fields refer to."]
    for name in sorted(_referenced(document["paths"], schemas)):
        schema = schemas[name]
        lines += ["", f"### `{name}` {{#{_anchor(name)}}}", ""]
        if "description" in schema:
            lines += [schema["description"], ""]
        lines += _fields_table(schema, schemas)
    return "\n".join(lines) + "\n"


def _resolve(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = schemas[_ref_name(schema["$ref"])]
    return schema


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _anchor(name: str) -> str:
    return "type-" + name.lower()


def _fields_table(schema: dict[str, Any], schemas: dict[str, Any]) -> list[str]:
    schema = _resolve(schema, schemas)
    properties: dict[str, Any] = schema.get("properties", {})
    if not properties:
        return ["An empty object."]
    required = set(schema.get("required", ()))
    described = any("description" in field for field in properties.values())
    header = ["field", "type", "required", "default"] + (["description"] if described else [])
    rows = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, field in properties.items():
        cells = [
            f"`{name}`",
            _schema_type(field),
            "yes" if name in required else "",
            f"`{_json(field['default'])}`" if "default" in field else "",
        ]
        if described:
            cells.append(_one_line(field.get("description", "")))
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _schema_type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f"[`{name}`](#{_anchor(name)})"
    if "anyOf" in schema:
        return " or ".join(_schema_type(option) for option in schema["anyOf"])
    kind = schema.get("type")
    if kind is None:
        return "any JSON"
    if kind == "array":
        return f"array of {_schema_type(schema['items'])}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_schema_type(schema['additionalProperties'])}"
    bounds = [
        f"{sign} {schema[name]}"
        for name, sign in (("minimum", "≥"), ("maximum", "≤"))
        if name in schema and abs(schema[name]) < 2**53  # int64's bounds say nothing
    ]
    return str(kind) + (f" ({', '.join(bounds)})" if bounds else "")


def _referenced(value: Any, schemas: dict[str, Any]) -> set[str]:
    """Names of the schemas ``value`` refers to, directly or through other schemas."""
    found: set[str] = set()

    def walk(item: Any) -> Iterator[str]:
        if isinstance(item, dict):
            for key, child in item.items():
                if key == "$ref":
                    yield _ref_name(child)
                else:
                    yield from walk(child)
        elif isinstance(item, list):
            for child in item:
                yield from walk(child)

    pending = list(walk(value))
    while pending:
        name = pending.pop()
        if name not in found:
            found.add(name)
            pending += walk(schemas[name])
    return found


# --- reference/cli.md --------------------------------------------------------------------


def cli_page() -> str:
    from tidings.app.cli import _parser

    parser = _parser()
    lines = [
        "# Command line",
        "",
        "Generated from the argument parser of `tidings` at each build of this site.",
        "`python -m tidings` is the same program.",
        "",
        "```",
        parser.format_usage().strip(),
        "```",
        "",
        parser.description or "",
        "",
        *_arguments_table(parser),
    ]
    for name, subparser, summary in _subcommands(parser):
        lines += ["", f"## `tidings {name}`", "", _sentence(summary), ""]
        lines += ["```", subparser.format_usage().strip(), "```", ""]
        lines += _arguments_table(subparser)
    return "\n".join(lines) + "\n"


def _sentence(text: str) -> str:
    """argparse's help strings are lowercase fragments: ``run the hub`` -> ``Run the hub.``"""
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _subcommands(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[str, argparse.ArgumentParser, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                yield name, subparser, helps.get(name, "")


def _arguments_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| argument | meaning |", "|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        flags = ", ".join(f"`{_flag(action, option)}`" for option in action.option_strings)
        meaning = (action.help or "").replace("%(prog)s", parser.prog)
        if action.required:
            meaning += " (required)"
        rows.append(f"| {flags} | {_one_line(meaning)} |")
    return rows if len(rows) > 2 else []


def _flag(action: argparse.Action, option: str) -> str:
    if action.nargs == 0:
        return option
    metavar = action.metavar or action.dest.upper()
    return (
        f"{option} {metavar}"
        if action.choices is None
        else f"{option} {{{','.join(map(str, action.choices))}}}"
    )


GENERATED: dict[str, Callable[[], str]] = {
    "reference/options.md": options_page,
    "reference/server-api.md": server_api_page,
    "reference/cli.md": cli_page,
}

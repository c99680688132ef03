#!/usr/bin/env python3
"""Generate ``redismigrate/sync.py``, the blocking API, from the async classes.

    python tools/gen_sync.py                 # (re)write redismigrate/sync.py
    python tools/gen_sync.py --check         # CI: exit 1 when the file is stale
    python tools/gen_sync.py --output PATH   # write (or --check) another file

Every class named in ``ASYNC_CLASSES`` (each must import) becomes a class of the same
name without its ``Async`` prefix. Its constructor takes the same parameters and builds
the async object; each public ``async def`` becomes a plain method of the same name,
signature and docstring whose body is ``return _portal.run_sync(self._async.name, ...)``,
passing every argument on by name (positionally only where the signature demands).
``redis_client`` arguments go through ``_portal.to_async_client``: the blocking API
takes a ``redis.Redis`` where the async one takes a ``redis.asyncio.Redis``, so that
annotation is the one thing rewritten (``RENAMES``). Public non-async methods and
properties are not wrapped; the generated class names them in a comment.

Signatures are read from the source with ``ast``, not from the live objects: each
annotation and default is copied as the exact source text (``RENAMES`` applied by
position), and the import behind every name it uses is copied from the module that
defines the method. The result is sorted by ``ruff check --select I --fix`` and
formatted by ``ruff format`` (using the project's configuration), then must pass
``ruff check`` as is, so the same sources and ruff version give the same bytes.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import importlib
import importlib.util
import inspect
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "redismigrate" / "sync.py"
SCRIPT = "tools/gen_sync.py"

# The async classes the blocking API mirrors: (module, class). Each one must import.
ASYNC_CLASSES: list[tuple[str, str]] = [
    ("redismigrate.aio.inspector", "AsyncIndexInspector"),
    ("redismigrate.aio.planner", "AsyncMigrationPlanner"),
    ("redismigrate.aio.executor", "AsyncMigrationExecutor"),
    ("redismigrate.aio.batch", "AsyncBatchMigrationPlanner"),
    ("redismigrate.aio.batch", "AsyncBatchMigrationExecutor"),
]

# Async types in annotations, by qualified name -> (text in the blocking API, its import).
RENAMES: dict[str, tuple[str, str]] = {
    "redis.asyncio.Redis": ("redis.Redis", "import redis"),
    "redis.asyncio.client.Redis": ("redis.Redis", "import redis"),
    "redismigrate.aio.connection.AsyncRedisClient": (
        "SyncRedisClient",
        "from redismigrate._portal import SyncRedisClient",
    ),
}

# Parameters that carry the caller's client; their argument goes through to_async_client.
CLIENT_PARAMETERS = frozenset({"redis_client"})

LINE_LENGTH = 100


class GenerationError(Exception):
    """The async sources cannot be mirrored as they are."""


@dataclass(frozen=True)
class Binding:
    """What a module-level name refers to, and the import statement that binds it."""

    qualname: str
    statement: str


class SourceModule:
    """One module's source text and tree, and what its top-level names are bound to."""

    def __init__(self, module: ModuleType) -> None:
        path = inspect.getsourcefile(module)
        if path is None:
            raise GenerationError(f"{module.__name__}: no source file")
        self.name = module.__name__
        self.text = Path(path).read_text(encoding="utf-8")
        self.raw = self.text.encode("utf-8")
        self.tree = ast.parse(self.text, filename=path)
        self.line_starts = [0]
        for line in self.raw.splitlines(keepends=True):
            self.line_starts.append(self.line_starts[-1] + len(line))
        self.bindings: dict[str, Binding] = {}
        package = module.__package__ or self.name.rpartition(".")[0]
        for statement in self._top_level(self.tree.body):
            self._bind(statement, package)

    def _top_level(self, body: list[ast.stmt]) -> list[ast.stmt]:
        """Top-level statements, including those under ``if TYPE_CHECKING:`` and ``try:``."""
        found: list[ast.stmt] = []
        for statement in body:
            found.append(statement)
            if isinstance(statement, (ast.If, ast.Try)):
                found += self._top_level(statement.body + statement.orelse)
        return found

    def _bind(self, statement: ast.stmt, package: str) -> None:
        if isinstance(statement, ast.Import):
            for alias in statement.names:
                if alias.asname:
                    self.bindings[alias.asname] = Binding(
                        alias.name, f"import {alias.name} as {alias.asname}"
                    )
                else:
                    root = alias.name.split(".")[0]
                    self.bindings[root] = Binding(root, f"import {alias.name}")
        elif isinstance(statement, ast.ImportFrom):
            if statement.module == "__future__":
                return
            module = statement.module or ""
            if statement.level:
                module = importlib.util.resolve_name("." * statement.level + module, package)
            for alias in statement.names:
                if alias.name == "*":
                    continue
                local = alias.asname or alias.name
                rename = (
                    f" as {alias.asname}" if alias.asname and alias.asname != alias.name else ""
                )
                self.bindings[local] = Binding(
                    f"{module}.{alias.name}", f"from {module} import {alias.name}{rename}"
                )
        else:
            names: list[str] = []
            if isinstance(statement, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [statement.name]
            elif isinstance(statement, ast.Assign):
                names = [t.id for t in statement.targets if isinstance(t, ast.Name)]
            elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                names = [statement.target.id]
            elif sys.version_info >= (3, 12) and isinstance(statement, ast.TypeAlias):
                names = [statement.name.id]
            for name in names:
                self.bindings[name] = Binding(
                    f"{self.name}.{name}", f"from {self.name} import {name}"
                )

    def offset(self, lineno: int, col: int) -> int:
        """Byte offset of a (1-based line, byte column) position."""
        return self.line_starts[lineno - 1] + col

    def span(self, node: ast.expr | ast.stmt) -> tuple[int, int]:
        """Byte offsets of where ``node`` starts and ends."""
        if node.end_lineno is None or node.end_col_offset is None:
            raise GenerationError(f"{self.name}: a node without a position")
        return (
            self.offset(node.lineno, node.col_offset),
            self.offset(node.end_lineno, node.end_col_offset),
        )

    def segment(self, node: ast.expr | ast.stmt) -> str:
        """The exact source text of ``node``."""
        start, end = self.span(node)
        return self.raw[start:end].decode("utf-8")

    def qualname(self, node: ast.expr) -> str | None:
        """``aioredis.Redis`` -> ``redis.asyncio.Redis`` when ``aioredis`` is that module."""
        if isinstance(node, ast.Name):
            binding = self.bindings.get(node.id)
            return binding.qualname if binding else None
        if isinstance(node, ast.Attribute):
            base = self.qualname(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def render(self, node: ast.expr, imports: dict[str, str], *, renames: bool) -> tuple[str, bool]:
        """The source text of ``node`` with RENAMES applied; records the imports it needs.

        Returns the text and whether a rename happened. ``imports`` maps each local name
        to the statement that binds it.
        """
        replacements: list[tuple[int, int, str]] = []

        def visit(child: ast.AST) -> None:
            if isinstance(child, (ast.Name, ast.Attribute)):
                qualname = self.qualname(child)
                if qualname in RENAMES:
                    text, statement = RENAMES[qualname]
                    if not renames:
                        raise GenerationError(
                            f"{self.name}: {self.segment(child)} appears where the blocking "
                            "API cannot take or give a sync equivalent"
                        )
                    replacements.append((*self.span(child), text))
                    _add_import(imports, text.split(".")[0], statement)
                    return
            if isinstance(child, ast.Name):
                binding = self.bindings.get(child.id)
                if binding is not None:
                    _add_import(imports, child.id, binding.statement)
                elif not hasattr(builtins, child.id):
                    raise GenerationError(f"{self.name}: cannot tell where {child.id!r} comes from")
                return
            for grandchild in ast.iter_child_nodes(child):
                visit(grandchild)

        visit(node)
        start, end = self.span(node)
        pieces: list[bytes] = []
        position = start
        for piece_start, piece_end, text in sorted(replacements):
            pieces += [self.raw[position:piece_start], text.encode("utf-8")]
            position = piece_end
        pieces.append(self.raw[position:end])
        return b"".join(pieces).decode("utf-8"), bool(replacements)


def _add_import(imports: dict[str, str], local: str, statement: str) -> None:
    known = imports.setdefault(local, statement)
    if known != statement:
        raise GenerationError(f"the name {local!r} is bound both by {known!r} and {statement!r}")


@dataclass
class Method:
    """A method found in an async class's source."""

    name: str
    node: ast.FunctionDef | ast.AsyncFunctionDef
    module: SourceModule
    owner: str


@dataclass
class Generator:
    """Collects the classes, imports and names of the generated module."""

    imports: dict[str, str] = field(default_factory=dict)
    modules: dict[str, SourceModule] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)

    def source(self, name: str) -> SourceModule:
        if name not in self.modules:
            self.modules[name] = SourceModule(sys.modules[name])
        return self.modules[name]

    def methods(self, cls: type) -> list[Method]:
        """The methods of ``cls`` and its bases, as written, first definition winning."""
        found: dict[str, Method | None] = {}
        package = cls.__module__.split(".")[0]
        for klass in cls.__mro__[:-1]:
            if klass.__module__.split(".")[0] != package:
                coroutines = [
                    name
                    for name, value in vars(klass).items()
                    if not name.startswith("_") and inspect.iscoroutinefunction(value)
                ]
                if coroutines:
                    raise GenerationError(
                        f"{cls.__name__} inherits async methods {coroutines} from "
                        f"{klass.__module__}.{klass.__qualname__}, outside {package}"
                    )
                continue
            if klass.__qualname__ != klass.__name__:
                raise GenerationError(f"{klass.__qualname__} is not a module-level class")
            module = self.source(klass.__module__)
            nodes = [
                n
                for n in module.tree.body
                if isinstance(n, ast.ClassDef) and n.name == klass.__name__
            ]
            if len(nodes) != 1:
                raise GenerationError(f"{module.name}: cannot find class {klass.__name__}")
            for statement in nodes[0].body:
                if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    found.setdefault(
                        statement.name, Method(statement.name, statement, module, klass.__name__)
                    )
                elif isinstance(statement, (ast.Assign, ast.AnnAssign)):
                    targets = (
                        statement.targets
                        if isinstance(statement, ast.Assign)
                        else [statement.target]
                    )
                    for target in targets:
                        if isinstance(target, ast.Name):
                            found.setdefault(target.id, None)
        return [method for method in found.values() if method is not None]

    def signature(self, method: Method, *, allow_client: bool) -> tuple[str, str]:
        """(parameters, call arguments) of ``method``, as source text."""
        arguments = method.node.args
        module = method.module
        where = f"{method.owner}.{method.name}"
        positional = arguments.posonlyargs + arguments.args
        if not positional:
            raise GenerationError(f"{where} has no self parameter")
        defaults: list[ast.expr | None] = [None] * (len(positional) - len(arguments.defaults))
        defaults += arguments.defaults
        params: list[str] = []
        call: list[str] = []

        def parameter(arg: ast.arg, default: ast.expr | None, prefix: str = "") -> str:
            text = prefix + arg.arg
            renamed = False
            if arg.annotation is not None:
                annotation, renamed = module.render(
                    arg.annotation, self.imports, renames=allow_client
                )
                text += f": {annotation}"
            if default is not None:
                value, _ = module.render(default, self.imports, renames=False)
                text += f" = {value}" if arg.annotation is not None else f"={value}"
            if renamed != (arg.arg in CLIENT_PARAMETERS):
                raise GenerationError(
                    f"{where}: parameter {arg.arg!r} "
                    + (
                        "takes an async client but is not named like a client parameter "
                        f"({', '.join(sorted(CLIENT_PARAMETERS))})"
                        if renamed
                        else "is a client parameter but is not annotated with an async client"
                    )
                )
            return text

        def argument(arg: ast.arg) -> str:
            if arg.arg in CLIENT_PARAMETERS:
                return f"_portal.to_async_client({arg.arg})"
            return arg.arg

        for index, (arg, default) in enumerate(zip(positional, defaults, strict=True)):
            if index == 0:
                params.append(arg.arg)  # self, as the source names it
            else:
                params.append(parameter(arg, default))
                if index < len(arguments.posonlyargs) or arguments.vararg is not None:
                    call.append(argument(arg))
                else:
                    call.append(f"{arg.arg}={argument(arg)}")
            if index == len(arguments.posonlyargs) - 1:
                params.append("/")
        if arguments.vararg is not None:
            params.append(parameter(arguments.vararg, None, "*"))
            call.append(f"*{arguments.vararg.arg}")
        elif arguments.kwonlyargs:
            params.append("*")
        for arg, kw_default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True):
            params.append(parameter(arg, kw_default))
            call.append(f"{arg.arg}={argument(arg)}")
        if arguments.kwarg is not None:
            params.append(parameter(arguments.kwarg, None, "**"))
            call.append(f"**{arguments.kwarg.arg}")
        return ", ".join(params), ", ".join(call)

    def returns(self, method: Method) -> str:
        if method.node.returns is None:
            return ""
        text, _ = method.module.render(method.node.returns, self.imports, renames=False)
        return f" -> {text}"

    @staticmethod
    def docstring(method: Method | ast.ClassDef, module: SourceModule) -> str | None:
        node = method.node if isinstance(method, Method) else method
        if ast.get_docstring(node, clean=False) is None:
            return None
        return module.segment(node.body[0])

    def mirror(self, module_name: str, class_name: str) -> str:
        """The source of the blocking twin of ``module_name.class_name``."""
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise GenerationError(f"cannot import {module_name}: {exc}") from None
        cls = getattr(module, class_name, None)
        if not isinstance(cls, type):
            raise GenerationError(f"{module_name} has no class {class_name}")
        if not class_name.startswith("Async") or len(class_name) == len("Async"):
            raise GenerationError(f"{module_name}.{class_name}: the name must start with Async")
        sync_name = class_name.removeprefix("Async")
        source = self.source(cls.__module__)
        _add_import(self.imports, class_name, f"from {cls.__module__} import {class_name}")
        _add_import(self.imports, sync_name, "<generated>")
        self.classes.append(sync_name)
        class_node = next(
            n for n in source.tree.body if isinstance(n, ast.ClassDef) and n.name == class_name
        )

        methods = self.methods(cls)
        init = next((m for m in methods if m.name == "__init__"), None)
        wrapped: list[Method] = []
        skipped: list[str] = []
        for method in methods:
            if method.name.startswith("_"):
                continue
            if not isinstance(method.node, ast.AsyncFunctionDef):
                skipped.append(method.name)
                continue
            where = f"{method.owner}.{method.name}"
            if method.node.decorator_list:
                raise GenerationError(f"{where}: decorated async methods cannot be mirrored")
            if _is_generator(method.node):
                raise GenerationError(f"{where}: async generators cannot be mirrored")
            if not inspect.iscoroutinefunction(getattr(cls, method.name)):
                raise GenerationError(f"{where} is not a coroutine function at run time")
            wrapped.append(method)

        lines = [f"class {sync_name}:"]
        doc = self.docstring(class_node, source)
        if doc is not None:
            lines += [f"    {doc}", ""]
        note = (
            f"Blocking twin of {cls.__module__}.{class_name}: each method runs the coroutine "
            "on redismigrate's portal loop (redismigrate/_portal.py)."
        )
        if skipped:
            note += f" Not wrapped (not coroutines): {', '.join(skipped)}."
        lines += textwrap.wrap(
            note, LINE_LENGTH - 4, initial_indent="    # ", subsequent_indent="    # "
        )
        lines += ["", f"    _async: {class_name}", ""]

        if init is not None:
            params, call = self.signature(init, allow_client=False)
            lines.append(f"    def __init__({params}){self.returns(init) or ' -> None'}:")
            init_doc = self.docstring(init, init.module)
            if init_doc is not None:
                lines.append(f"        {init_doc}")
        else:
            call = ""
            lines.append("    def __init__(self) -> None:")
        lines += [f"        self._async = {class_name}({call})", ""]

        for method in wrapped:
            params, call = self.signature(method, allow_client=True)
            lines.append(f"    def {method.name}({params}){self.returns(method)}:")
            method_doc = self.docstring(method, method.module)
            if method_doc is not None:
                lines.append(f"        {method_doc}")
            lines += [
                f"        return _portal.run_sync(self._async.{method.name}, {call})",
                "",
            ]
        return "\n".join(lines).rstrip() + "\n"


def _is_generator(node: ast.AsyncFunctionDef) -> bool:
    """Whether the body itself (not a nested function) yields."""

    def walk(children: list[ast.AST]) -> bool:
        for child in children:
            if isinstance(child, (ast.Yield, ast.YieldFrom)):
                return True
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                continue
            if walk(list(ast.iter_child_nodes(child))):
                return True
        return False

    return walk(list(node.body))


def header(modules: list[str]) -> str:
    """The DO-NOT-EDIT comment that opens the generated file."""
    first = textwrap.wrap(
        f"DO NOT EDIT: generated by {SCRIPT} from {', '.join(modules)}.",
        LINE_LENGTH - 1,
        initial_indent="# ",
        subsequent_indent="# ",
        break_long_words=False,
        break_on_hyphens=False,
    )
    return "\n".join([*first, f"# Run `python {SCRIPT}` to regenerate."]) + "\n"


MODULE_DOC = '''"""The blocking API: the classes of ``redismigrate.aio``, without ``await``.

Each method runs its async twin on an event loop in a helper thread (one per process, see
``redismigrate/_portal.py``), so it works in plain scripts and where an event loop is
already running (notebooks) alike. ``redis_client=`` takes a ``redis.Redis``; errors are
the same ``redismigrate.errors`` exceptions the async API raises.
"""
'''


def _ruff(*args: str, text: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ruff"]
    if importlib.util.find_spec("ruff") is None:
        command = ["ruff"]
    try:
        return subprocess.run(
            [*command, *args, "--stdin-filename", str(OUTPUT), "-"],
            input=text,
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
    except FileNotFoundError:
        raise GenerationError("ruff is needed: pip install ruff") from None


def _polish(text: str) -> str:
    """Sort the imports and format with the project's ruff settings; refuse lint failures."""
    fixed = _ruff("check", "--select", "I", "--fix", "--exit-zero", "--quiet", text=text)
    if fixed.returncode != 0:
        raise GenerationError(f"ruff check --fix failed: {fixed.stderr.strip()}")
    formatted = _ruff("format", "--quiet", text=fixed.stdout)
    if formatted.returncode != 0:
        raise GenerationError(f"ruff format failed: {formatted.stderr.strip()}")
    linted = _ruff("check", "--quiet", "--output-format", "concise", text=formatted.stdout)
    if linted.returncode != 0:
        raise GenerationError(
            "the generated code fails ruff check:\n" + (linted.stdout + linted.stderr).strip()
        )
    return formatted.stdout


def generate() -> str:
    """The full text of redismigrate/sync.py."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    generator = Generator()
    bodies = [generator.mirror(module, name) for module, name in ASYNC_CLASSES]
    _add_import(generator.imports, "_portal", "from redismigrate import _portal")
    statements = sorted(
        {statement for statement in generator.imports.values() if statement != "<generated>"}
    )
    exported = ", ".join(f'"{name}"' for name in sorted(generator.classes))
    text = (
        header(sorted({module for module, _ in ASYNC_CLASSES}))
        + MODULE_DOC
        + "\nfrom __future__ import annotations\n\n"
        + "\n".join(statements)
        + f"\n\n__all__ = [{exported}]\n\n\n"
        + "\n\n".join(bodies)
    )
    return _polish(text)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    absolute = path.resolve()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def check(output: Path = OUTPUT) -> int:
    """0 when ``output`` holds what would be generated; else 1 and a one-line message."""
    expected = generate()
    try:
        current: str | None = output.read_bytes().decode("utf-8")
    except FileNotFoundError:
        current = None
    if current == expected:
        return 0
    state = "is missing" if current is None else "is out of date"
    print(f"{_shown(output)} {state}: run `python {SCRIPT}` to regenerate it", file=sys.stderr)
    return 1


def write(output: Path = OUTPUT) -> int:
    expected = generate()
    if output.exists() and output.read_bytes().decode("utf-8") == expected:
        print(f"{_shown(output)} is up to date")
        return 0
    output.write_bytes(expected.encode("utf-8"))
    print(f"wrote {_shown(output)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the file differs from what it would be"
    )
    parser.add_argument("--output", type=Path, default=OUTPUT, help="file to write or check")
    options = parser.parse_args(argv)
    try:
        return check(options.output) if options.check else write(options.output)
    except GenerationError as exc:
        print(f"{SCRIPT}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

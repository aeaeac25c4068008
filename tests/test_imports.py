"""One-way imports: no circles in ``slixmpp_push``, and each room imports only
the rooms that ``docs/architecture.md`` allows it.

The import graph is read from the sources with ``ast``, so an import a test
run never executes still counts:

- ``import a.b``, ``from a.b import c`` and relative imports; ``from pkg import
  submodule`` depends on the submodule too;
- imports inside functions count: one that only hides a circle is still a circle;
- imports under ``if TYPE_CHECKING:`` do not (they never run);
- importing ``a.b.c`` runs the ``__init__`` of ``a`` and ``a.b`` first, so it
  depends on them too, except on the importer's own packages: those are
  already initialising when the importer runs (a module may import its
  siblings), unless it takes a name defined in that ``__init__``.

Then two fresh interpreters check what the static graph cannot: the plugins
register by name after ``import slixmpp_push``, and every module imports
cleanly when it is the first one imported.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "slixmpp_push"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

Graph = dict[str, set[str]]


# -- the static import graph ---------------------------------------------------------------
def module_files(source: Path, package: str) -> dict[str, Path]:
    """Every module of the package below ``source`` (the folder holding ``package``)."""
    modules = {}
    for path in sorted((source / package).rglob("*.py")):
        parts = list(path.relative_to(source).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement below ``node``, at any depth, except the body of
    ``if TYPE_CHECKING:`` (its ``else`` runs, so it counts)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.orelse:
                yield from _import_nodes(ast.Module(body=[statement], type_ignores=[]))
        else:
            yield from _import_nodes(child)


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(source: Path, package: str) -> Graph:
    """Module → the package's modules it imports (directly), see the module docstring."""
    modules = module_files(source, package)

    def with_packages(target: str, importer: str) -> set[str]:
        """``target`` and the packages whose ``__init__`` importing it runs."""
        own = set(_ancestors(importer))
        return {m for m in [*_ancestors(target), target] if m in modules and m not in own}

    graph: Graph = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        here = module if is_package else module.rpartition(".")[0]
        deps: set[str] = set()
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    deps |= with_packages(alias.name, module)
                continue
            if node.level:
                base = here.split(".")[:len(here.split(".")) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target not in modules and not target.startswith(package + "."):
                continue  # another distribution
            deps |= with_packages(target, module)
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in modules:
                    deps |= with_packages(submodule, module)
                elif target in _ancestors(module):
                    deps.add(target)  # a name from an enclosing package's __init__
        deps.discard(module)
        graph[module] = deps
    return graph


def find_cycles(graph: Graph) -> list[list[str]]:
    """One shortest circle (``[a, b, …, a]``) per group of modules that import
    each other (a strongly connected component, Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_shortest_cycle(graph, component) for component in components]


def _shortest_cycle(graph: Graph, component: set[str]) -> list[str]:
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    for node in queue:  # breadth first, inside the component
        for nxt in sorted(graph[node] & component):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start}")  # a component always has one


# -- the rooms of docs/architecture.md -------------------------------------------------------
def rooms_from_architecture(text: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """The rooms table: module name (relative to the package, ``__init__`` for the
    package itself) → room, and room → the rooms it may import."""
    members: dict[str, str] = {}
    may_import: dict[str, set[str]] = {}
    row = re.compile(r"^\|\s*\*\*(\w+)\*\*\s*\|(.*)\|(.*)\|\s*$")
    for line in text.splitlines():
        match = row.match(line)
        if not match:
            continue
        room, modules, allowed = match.groups()
        for name in re.findall(r"`([^`]+)`", modules):
            members[name.removesuffix("/").removesuffix(".py").replace("/", ".")] = room
        may_import[room] = set(re.findall(r"\*\*(\w+)\*\*", allowed))
    return members, may_import


def room_of(module: str, members: dict[str, str]) -> str | None:
    """The room of the longest listed name that is ``module`` or a package above it."""
    relative = module.removeprefix(PACKAGE).removeprefix(".") or "__init__"
    parts = relative.split(".")
    for end in range(len(parts), 0, -1):
        room = members.get(".".join(parts[:end]))
        if room is not None:
            return room
    return None


# -- the detector itself -------------------------------------------------------------------
def write_package(source: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = source / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_detector_sees_circles_hidden_in_functions_and_package_inits(tmp_path: Path) -> None:
    write_package(tmp_path, {
        "pkg/__init__.py": "from .plugins import Plugin\n",
        "pkg/errors.py": "",
        "pkg/config.py": """\
            from .errors import *
            def load():
                from .plugins.settings import read  # local: still a dependency
            """,
        "pkg/plugins/__init__.py": "from .plugin import Plugin\n",
        "pkg/plugins/plugin.py": "from .. import config\nclass Plugin: ...\n",
        "pkg/plugins/settings.py": "def read(): ...\n",
    })
    graph = import_graph(tmp_path, "pkg")
    # config → plugins.settings runs plugins/__init__ → plugins.plugin → config
    assert find_cycles(graph) == [
        ["pkg.config", "pkg.plugins", "pkg.plugins.plugin", "pkg.config"]]
    assert graph["pkg.plugins.plugin"] == {"pkg.config"}  # its own packages are not edges


def test_detector_skips_type_checking_and_follows_names_from_inits(tmp_path: Path) -> None:
    write_package(tmp_path, {
        "pkg/__init__.py": "VERSION = 1\nfrom . import a\n",
        "pkg/a.py": """\
            from typing import TYPE_CHECKING
            import pkg.b
            if TYPE_CHECKING:
                from .c import C
            else:
                from . import d
            """,
        "pkg/b.py": "from pkg import VERSION\n",  # a name from the package's __init__
        "pkg/c.py": "from .a import *\n",
        "pkg/d.py": "",
    })
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.b", "pkg.d"}
    assert graph["pkg.b"] == {"pkg"}
    assert find_cycles(graph) == [["pkg", "pkg.a", "pkg.b", "pkg"]]


# -- slixmpp_push ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(ROOT, PACKAGE)


def test_no_import_circles(graph: Graph) -> None:
    cycles = find_cycles(graph)
    assert not cycles, "modules import each other in a circle:\n" + "\n".join(
        " → ".join(cycle) for cycle in cycles)


def test_every_module_has_a_room(graph: Graph) -> None:
    members, may_import = rooms_from_architecture(ARCHITECTURE.read_text(encoding="utf-8"))
    assert set(members.values()) == set(may_import), "a room without a row, or the reverse"
    assert all(allowed <= set(may_import) for allowed in may_import.values())
    homeless = sorted(m for m in graph if room_of(m, members) is None)
    assert not homeless, f"give these modules a room in {ARCHITECTURE.name}: {homeless}"


def test_rooms_import_only_what_architecture_md_allows(graph: Graph) -> None:
    members, may_import = rooms_from_architecture(ARCHITECTURE.read_text(encoding="utf-8"))
    wrong = []
    for module, deps in sorted(graph.items()):
        room = room_of(module, members)
        for dep in sorted(deps):
            target = room_of(dep, members)
            if room is not None and target is not None and target != room \
                    and target not in may_import[room]:
                wrong.append(f"{module} ({room}) imports {dep} ({target})")
    assert not wrong, f"imports the rooms of {ARCHITECTURE.name} forbid:\n" + "\n".join(wrong)


def test_the_rules_that_matter_most(graph: Graph) -> None:
    """Spelled out, should the table ever be loosened by mistake."""
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for dep in graph[todo.pop()] - seen:
                seen.add(dep)
                todo.append(dep)
        return seen

    plugins = {m for m in graph if m.endswith(".plugin")}
    assert len(plugins) == 3
    for low in ("slixmpp_push.config", "slixmpp_push.store", "slixmpp_push.providers",
                "slixmpp_push.providers.apns", "slixmpp_push.providers.fcm",
                "slixmpp_push.payloads", "slixmpp_push.xep_0357"):
        assert not reach(low) & plugins, f"{low} reaches a plugin"
    assert not {m for m in reach("slixmpp_push.config") if ".providers" in m}


# -- fresh interpreters --------------------------------------------------------------------
def run_python(code: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_plugins_register_by_name_after_import_slixmpp_push(tmp_path: Path) -> None:
    out = run_python("""\
        import asyncio

        import slixmpp_push
        from slixmpp import ClientXMPP, ComponentXMPP

        async def main():
            for xmpp in (ClientXMPP("bot@localhost", "pw"),
                         ComponentXMPP("push.localhost", "secret", "127.0.0.1", 5347)):
                store = slixmpp_push.MemoryStore()
                app = slixmpp_push.AppConfig(id="console", type="console")
                xmpp.register_plugin("push_appserver", {"apps": [app], "store": store})
                xmpp.register_plugin("push_registrar")
                xmpp.register_plugin("push_notifier", {"store": store})
                for name, cls in (("push_appserver", slixmpp_push.PushAppServer),
                                  ("push_registrar", slixmpp_push.PushRegistrar),
                                  ("push_notifier", slixmpp_push.PushNotifier)):
                    assert isinstance(xmpp[name], cls), (name, type(xmpp[name]))
                print(type(xmpp).__name__, "ok")

        asyncio.run(main())
        """, tmp_path)
    assert out.split("\n") == ["ClientXMPP ok", "ComponentXMPP ok", ""]


def test_every_module_imports_when_it_is_imported_first(graph: Graph, tmp_path: Path) -> None:
    """Each module first, in a fresh ``sys.modules``. Importing a module runs the
    package's ``__init__`` first, so every module ``import slixmpp_push`` loads is
    loaded in that one order, whichever is asked for: one round covers them all,
    and only the others (the CLI, the server, lazily imported providers…) need
    a round of their own."""
    out = run_python(f"""\
        import importlib
        import sys

        def fresh_import(name):
            for loaded in [m for m in sys.modules if m.split(".")[0] == {PACKAGE!r}]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception as exc:
                failed.append(f"{{name}}: {{type(exc).__name__}}: {{exc}}")

        failed = []
        fresh_import({PACKAGE!r})
        by_package = set(sys.modules)
        for name in {sorted(graph)!r}:
            if name not in by_package:
                fresh_import(name)
        print("\\n".join(failed) or "all imported")
        """, tmp_path)
    assert out.strip() == "all imported"

"""The package's shape, checked statically with ``ast`` (DESIGN.md sections 1 and 5).

Imports point down, even those made only for type checking: the small private
modules import nothing from reactor; ``binding`` and ``loop`` stand on them
alone; the accept path stands on the loop, the Reactor on the accept path, the
strategies and the drop-in above. No module reaches into another module's
private names. One module alone asks which platform it runs on. Library code
never prints or exits, every module says what it is for, and importing the
package has no side effects.
"""

from __future__ import annotations

import ast
import functools
import json
import socketserver as std_socketserver
from collections.abc import Iterator
from pathlib import Path

import pytest

from reactor import socketserver as rsocketserver
from support import REPO_ROOT, run_python

PACKAGE = "reactor"
PACKAGE_DIR = REPO_ROOT / PACKAGE

#: Short module names ("loop", "_timers", ...); the package itself is "__init__". A
#: subpackage is named by its directory ("prefork", for prefork/__init__.py) and its
#: modules by a dotted name ("prefork.master").
SUBPACKAGES = sorted(path.parent.name for path in PACKAGE_DIR.glob("*/__init__.py"))
MODULES = sorted([path.stem for path in PACKAGE_DIR.glob("*.py")] + SUBPACKAGES + [
    f"{sub}.{path.stem}" for sub in SUBPACKAGES for path in (PACKAGE_DIR / sub).glob("*.py")
    if path.stem != "__init__"])

#: The pure bottom layer: imports nothing from reactor at all.
LEAF_MODULES = ("_timers", "_waker", "_errors", "_platform", "_ratelimit", "_procinfo", "access", "proxy_protocol", "http_boundary",
                "systemd")

#: Layers, bottom first: a module may import only from layers below its own (a
#: subpackage's modules share its layer, and may import each other).
LAYERS: tuple[frozenset[str], ...] = tuple(frozenset(layer) for layer in (
    LEAF_MODULES,
    ("binding", "loop"),
    ("admission", "keepalive", "buffered"),
    # Read-ahead drives buffered connections for admitted, parked ones.
    ("readahead",),
    ("accept",),
    ("protocol",),
    ("framing",),
    ("hosting",),
    ("dispatch",),
    ("prefork",),
    ("socketserver",),
    ("__init__",),
    # The admin endpoint (statistics over HTTP) stands on the loop alone; the command serves it.
    ("admin",),
    # The whole-process upgrade the command runs on SIGUSR2 (loop, binding and systemd below it).
    ("upgrade",),
    # The command stands on everything and nothing imports it; ``python -m reactor`` runs it.
    ("cli",),
    ("__main__",),
))

#: Modules that may not be imported by a given module, directly or through others
#: (a name covers a subpackage's modules too).
FORBIDDEN = {
    "loop": {"accept", "hosting", "binding", "socketserver", "dispatch", "prefork"},
    "binding": {"loop", "accept", "hosting", "socketserver", "dispatch", "prefork"},
    "admission": {"accept", "hosting", "socketserver", "dispatch", "prefork"},
    "keepalive": {"accept", "hosting", "socketserver", "dispatch", "prefork", "admission"},
    "buffered": {"accept", "hosting", "socketserver", "dispatch", "prefork", "admission", "keepalive"},
    "readahead": {"accept", "hosting", "socketserver", "dispatch", "prefork", "protocol", "framing"},
    "accept": {"hosting", "socketserver", "dispatch", "prefork", "protocol", "framing"},
    "protocol": {"hosting", "socketserver", "dispatch", "prefork", "framing"},
    "framing": {"hosting", "socketserver", "dispatch", "prefork"},
    "hosting": {"socketserver", "dispatch", "prefork"},
    # The admin endpoint knows a reactor only by its stats() snapshot and the loop's public API.
    "admin": {"accept", "hosting", "socketserver", "dispatch", "prefork", "protocol"},
    "upgrade": {"accept", "hosting", "socketserver", "dispatch", "prefork", "protocol"},
}


# ---------------------------------------------------------------- import analysis

def _path_of(module: str) -> Path:
    if module in SUBPACKAGES:
        return PACKAGE_DIR / module / "__init__.py"
    return PACKAGE_DIR / (module.replace(".", "/") + ".py")


def _package_of(module: str) -> list[str]:
    """The package a module's relative imports start from, below reactor: [] or ["prefork"]."""
    if module in SUBPACKAGES:
        return [module]
    return module.split(".")[:-1]


def top_level(modules: set[str]) -> set[str]:
    """``prefork.master`` -> ``prefork``: what the layering rules name."""
    return {module.split(".")[0] for module in modules}


@functools.lru_cache(maxsize=None)
def parse(module: str) -> ast.Module:
    path = _path_of(module)
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _resolve(module: str | None, level: int, names: list[str], package: list[str] | None = None) -> Iterator[str]:
    """The reactor modules named by one import statement (short names), made in ``package`` (below reactor)."""
    base = list(package or [])
    if level:
        if level - 1 > len(base):
            return  # beyond the package: not ours
        parts = base[:len(base) - (level - 1)] + (module.split(".") if module else [])
    else:
        if module is None or module.split(".")[0] != PACKAGE:
            return
        parts = module.split(".")[1:]
    if parts:
        if parts[0] not in SUBPACKAGES:
            yield parts[0]
            return
        if len(parts) > 1:
            yield ".".join(parts[:2])
            return
        # "from .prefork import x" / "from . import x" inside prefork: x is a module or a name in its __init__.
        for name in names:
            yield f"{parts[0]}.{name}" if (PACKAGE_DIR / parts[0] / f"{name}.py").exists() else parts[0]
        return
    # "from . import x" / "from reactor import x": x is a module or a name in __init__.
    for name in names:
        yield name if (PACKAGE_DIR / f"{name}.py").exists() or name in SUBPACKAGES else "__init__"


def _is_type_checking_test(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "TYPE_CHECKING") or (
        isinstance(node, ast.Attribute) and node.attr == "TYPE_CHECKING")


def imports_of(tree: ast.AST, package: list[str] | None = None) -> set[tuple[str, bool]]:
    """(reactor module, runtime?) for every import in ``tree`` (a module of ``package``), function bodies included.

    Imports under ``if TYPE_CHECKING:`` are reported with runtime=False.
    """
    found: set[tuple[str, bool]] = set()

    def visit(node: ast.AST, runtime: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE:
                    if len(parts) > 2 and parts[1] in SUBPACKAGES:
                        found.add((".".join(parts[1:3]), runtime))
                    else:
                        found.add((parts[1] if len(parts) > 1 else "__init__", runtime))
        elif isinstance(node, ast.ImportFrom):
            for target in _resolve(node.module, node.level, [a.name for a in node.names], package):
                found.add((target, runtime))
        if isinstance(node, ast.If) and _is_type_checking_test(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, runtime)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, runtime)

    visit(tree, True)
    return found


def direct_imports(module: str, *, runtime_only: bool = False) -> set[str]:
    return {target for target, runtime in imports_of(parse(module), _package_of(module))
            if (runtime or not runtime_only) and target != module}


def runtime_closure(module: str) -> set[str]:
    """Every reactor module that importing ``module`` loads (through other modules too)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current not in MODULES:
            continue  # named but not written yet
        for target in direct_imports(current, runtime_only=True):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    seen.discard(module)
    return seen


# ---------------------------------------------------------------- the analysis itself works

def test_import_analysis_understands_every_import_form() -> None:
    tree = ast.parse(
        "import reactor.loop\n"
        "from reactor import dispatch\n"
        "from reactor.binding import bind_socket\n"
        "from . import socketserver\n"
        "from . import Reactor\n"
        "from ._timers import Handle\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from .prefork import Prefork\n"
        "def later():\n"
        "    from .loop import Reactor\n"
    )
    assert imports_of(tree) == {
        ("loop", True), ("dispatch", True), ("binding", True), ("socketserver", True),
        ("__init__", True), ("_timers", True), ("prefork", False),
    }


def test_import_analysis_understands_imports_inside_a_subpackage() -> None:
    tree = ast.parse(
        "from ..loop import Reactor\n"
        "from .. import dispatch\n"
        "from ._messages import Command\n"
        "from . import master\n"
        "from . import Prefork\n"
        "import reactor.prefork.worker\n"
        "from reactor.prefork.arbiter import arbiter_main\n"
        "from ...elsewhere import x\n"
    )
    assert imports_of(tree, ["prefork"]) == {
        ("loop", True), ("dispatch", True), ("prefork._messages", True), ("prefork.master", True),
        ("prefork", True), ("prefork.worker", True), ("prefork.arbiter", True),
    }


def test_the_package_has_the_modules_the_rules_talk_about() -> None:
    for layer in LAYERS:
        for module in layer:
            assert module in MODULES
    assert {module.split(".")[0] for module in MODULES} == set().union(*LAYERS), "every module has a layer"
    assert {"prefork.master", "prefork.arbiter", "prefork.worker", "prefork.standby"} <= set(MODULES)


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    return next(index for index, layer in enumerate(LAYERS) if top in layer)


def same_subpackage(module: str, target: str) -> bool:
    return module.split(".")[0] == target.split(".")[0] and module.split(".")[0] in SUBPACKAGES


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down_the_layers_even_for_type_checking(module: str) -> None:
    offending = sorted(target for target in direct_imports(module)
                       if target in MODULES and layer_of(target) >= layer_of(module)
                       and not same_subpackage(module, target))
    assert not offending, f"reactor.{module} imports {offending} from its own layer or above"


def test_prefork_modules_import_hosting_only_where_needed() -> None:
    # The master side talks to hosting from one module (master.py); the worker hosts
    # its server on its own Reactor; the package facade defines the Topology subclass;
    # the fork-time Plan carries the HostingOptions record.
    users = {module for module in MODULES if module.startswith("prefork")
             if direct_imports(module) & {"hosting", "accept"}}
    assert users <= {"prefork", "prefork.master", "prefork.worker", "prefork._process"}, users
    assert direct_imports("prefork._process") & {"hosting", "accept"} <= {"accept"}


# ---------------------------------------------------------------- layering

@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_module_does_not_import_upper_layers_directly(module: str) -> None:
    offending = top_level(direct_imports(module)) & FORBIDDEN[module]
    assert not offending, f"reactor.{module} imports {sorted(offending)} (even for typing, imports point down)"


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_module_does_not_load_upper_layers_through_other_modules(module: str) -> None:
    offending = top_level(runtime_closure(module)) & FORBIDDEN[module]
    assert not offending, f"importing reactor.{module} loads {sorted(offending)}"


@pytest.mark.parametrize("module", LEAF_MODULES)
def test_private_leaf_module_imports_nothing_from_reactor(module: str) -> None:
    assert direct_imports(module) == set()


@pytest.mark.parametrize("module", [m for m in MODULES if m != "__init__"])
def test_no_module_imports_the_package_facade(module: str) -> None:
    assert "__init__" not in direct_imports(module), (
        f"reactor.{module} imports from the package __init__; import the defining module instead")


def test_imports_have_no_cycles_not_even_for_type_checking() -> None:
    graph = {module: direct_imports(module) & set(MODULES) for module in MODULES}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "active"
        for target in sorted(graph[module]):
            if state.get(target) == "active":
                pytest.fail("import cycle: " + " -> ".join(path + [module, target]))
            if target not in state:
                visit(target, path + [module])
        state[module] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [])


# ---------------------------------------------------------------- private names stay home

def _imported_module_aliases(tree: ast.AST) -> set[str]:
    """Names bound to modules outside reactor (``os``, ``_std`` for the stdlib socketserver...)."""
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != PACKAGE:
                    aliases.add(alias.asname or alias.name.split(".")[0])
    return aliases


def _defined_private_names(tree: ast.AST) -> set[str]:
    """Private names this module defines: functions, classes, assigned attributes and slots."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ entries, dataclass-style names
    return {name for name in names if name.startswith("_")}


def foreign_private_uses(tree: ast.AST) -> list[str]:
    """Uses of another reactor module's private names: ``from .x import _y``, or
    ``obj._attr`` where ``_attr`` is not defined in this module (``self``/``cls``,
    ``super()`` and stdlib modules aside)."""
    found = []
    stdlib = _imported_module_aliases(tree)
    own = _defined_private_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(PACKAGE)):
            found.extend(f"line {node.lineno}: imports {alias.name}" for alias in node.names
                         if alias.name.startswith("_") and not alias.name.startswith("__"))
        if not isinstance(node, ast.Attribute):
            continue
        attr = node.attr
        if not attr.startswith("_") or attr.startswith("__") or attr in own:
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id in {"self", "cls"} | stdlib:
            continue
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super":
            continue
        found.append(f"line {node.lineno}: .{attr}")
    return found


def test_private_use_detector_finds_every_form() -> None:
    tree = ast.parse(
        "import os\nfrom ._timers import _helper\nfrom .loop import EventLoop\n"
        "class A:\n    def f(self, other, loop):\n        self._mine = 1\n        other._mine\n"
        "        loop._claims\n        os._exit(0)\n        super()._x\n"
    )
    assert foreign_private_uses(tree) == ["line 2: imports _helper", "line 8: ._claims"]


@pytest.mark.parametrize("module", MODULES)
def test_no_module_uses_another_modules_private_names(module: str) -> None:
    assert foreign_private_uses(parse(module)) == []


# ---------------------------------------------------------------- platform questions

def _platform_queries(tree: ast.AST) -> list[str]:
    """Where ``tree`` asks which platform it runs on: ``sys.platform`` (any alias of
    sys), ``from sys import platform``, or the ``platform`` module."""
    sys_aliases = {"sys"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            sys_aliases.update(a.asname for a in node.names if a.name == "sys" and a.asname)
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr == "platform"
                and isinstance(node.value, ast.Name) and node.value.id in sys_aliases):
            found.append(f"line {node.lineno}: sys.platform")
        elif isinstance(node, ast.ImportFrom) and node.module == "sys" and any(
                a.name == "platform" for a in node.names):
            found.append(f"line {node.lineno}: from sys import platform")
        elif isinstance(node, ast.Import) and any(a.name == "platform" for a in node.names):
            found.append(f"line {node.lineno}: import platform")
    return found


def test_platform_query_detector_finds_every_form() -> None:
    tree = ast.parse("import sys as _s\nfrom sys import platform\nimport platform\nx = _s.platform\n")
    assert len(_platform_queries(tree)) == 3
    assert _platform_queries(ast.parse("import sys\nsys.platform.startswith('linux')\n"))


def test_only_the_platform_module_asks_sys_platform() -> None:
    offenders = {module: found for module in MODULES if module != "_platform"
                 if (found := _platform_queries(parse(module)))}
    assert offenders == {}, f"ask reactor._platform instead: {offenders}"
    assert _platform_queries(parse("_platform")), "_platform should be where the platform is decided"


# ---------------------------------------------------------------- no print, no exit

def _print_or_exit_calls(tree: ast.AST) -> list[str]:
    """Calls of print(), exit(), quit() and sys.exit() (any alias of sys) in ``tree``."""
    sys_aliases = {"sys"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            sys_aliases.update(a.asname for a in node.names if a.name == "sys" and a.asname)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("print", "exit", "quit"):
            found.append(f"line {node.lineno}: {func.id}()")
        elif (isinstance(func, ast.Attribute) and func.attr == "exit"
              and isinstance(func.value, ast.Name) and func.value.id in sys_aliases):
            found.append(f"line {node.lineno}: sys.exit()")
    return found


def test_print_and_exit_detector_finds_every_form() -> None:
    tree = ast.parse("import sys as s\nprint('x')\nsys.exit(1)\ns.exit(2)\nexit()\ndef f():\n    print()\n")
    assert len(_print_or_exit_calls(tree)) == 5
    assert _print_or_exit_calls(ast.parse("import os\nos._exit(0)\nlogger.info('x')\n")) == []


@pytest.mark.parametrize("module", MODULES)
def test_library_code_never_prints_or_exits(module: str) -> None:
    assert _print_or_exit_calls(parse(module)) == []


def test_compat_servers_keep_the_stdlib_handle_error() -> None:
    # The stdlib's handle_error prints a traceback; that is the stdlib's
    # documented behaviour, kept as is, not code of ours that prints.
    for name in dir(rsocketserver):
        cls = getattr(rsocketserver, name)
        if isinstance(cls, type) and issubclass(cls, std_socketserver.BaseServer):
            assert cls.handle_error is std_socketserver.BaseServer.handle_error, name


# ---------------------------------------------------------------- docstrings

@pytest.mark.parametrize("module", MODULES)
def test_every_module_has_a_docstring(module: str) -> None:
    docstring = ast.get_docstring(parse(module))
    assert docstring and docstring.strip(), f"{_path_of(module)} has no module docstring"


# ---------------------------------------------------------------- import side effects

def test_importing_reactor_starts_no_thread_and_opens_no_descriptor() -> None:
    result = run_python(
        """
        import importlib, json, logging, pkgutil, signal, threading
        from support import open_fds

        catchable = [s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)]
        fds = open_fds()
        threads = set(threading.enumerate())
        handlers = {s: signal.getsignal(s) for s in catchable}
        root_handlers = list(logging.getLogger().handlers)

        import reactor
        for info in pkgutil.iter_modules(reactor.__path__):
            importlib.import_module("reactor." + info.name)

        print(json.dumps({
            "modules": sorted(info.name for info in pkgutil.iter_modules(reactor.__path__)),
            "new_fds": sorted(open_fds() - fds),
            "new_threads": sorted(t.name for t in set(threading.enumerate()) - threads),
            "changed_signals": sorted(int(s) for s in catchable if signal.getsignal(s) != handlers[s]),
            "wakeup_fd": signal.set_wakeup_fd(-1),
            "root_logging_handlers_added": len(logging.getLogger().handlers) - len(root_handlers),
        }))
        """,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    report = json.loads(result.stdout)
    assert "loop" in report["modules"]
    assert report["new_fds"] == []
    assert report["new_threads"] == []
    assert report["changed_signals"] == []
    assert report["wakeup_fd"] == -1
    assert report["root_logging_handlers_added"] == 0


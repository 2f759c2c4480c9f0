"""The package keeps the structure README's code map describes (AST-based, like the lint test).

Rules:
1. No import cycles between the package's modules (imports under `if TYPE_CHECKING:` do not count).
2. No function-level import of the package's own modules; at most MAX_LAZY_IMPORTS of optional
   third-party dependencies, and only inside the command-line package.
3. No module imports another module's underscore-named helper.
4. Carriers (gateway/providers/) import only errors, inbound and providers, and no I/O library.
5. Storage imports no edge module (the request path, answers, the app, the CLI, diagnostics).
6. Only the command-line package imports the command-line package.
7. Outside gateway/providers/ at most MAX_CARRIER_AWARE modules name a carrier in code.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.providers import Provider
from gateway.providers.registry import CARRIERS
from tests.helpers.support import REPO

PACKAGE = REPO / "gateway"
MAX_LAZY_IMPORTS = 6
MAX_CARRIER_AWARE = 2
STORAGE = frozenset(
    {
        "gateway.cache",
        "gateway.forwarder",
        "gateway.keystore",
        "gateway.phone_records",
        "gateway.random_ids",
        "gateway.redis_client",
        "gateway.redis_errors",
        "gateway.redis_keys",
        "gateway.redis_url",
        "gateway.sealing",
        "gateway.secrets",
        "gateway.stream_monitor",
    }
)
EDGE = frozenset(
    {
        "gateway.admin",
        "gateway.answers",
        "gateway.app",
        "gateway.asgi_io",
        "gateway.calls",
        "gateway.dispatch",
        "gateway.http_protocol",
        "gateway.proxy",
        "gateway.webhooks",
    }
)
EDGE_PACKAGES = ("gateway.cli", "gateway.diagnostics")
PROVIDER_MAY_IMPORT = ("gateway.errors", "gateway.inbound", "gateway.providers")
IO_LIBRARIES = frozenset(
    {"asyncio", "socket", "redis", "starlette", "uvicorn", "httpx", "h11", "httptools", "subprocess", "urllib.request"}
)
CARRIER_NAMES = tuple(provider.value for provider in Provider)


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    imports: set[str] = field(default_factory=set)  # gateway modules imported at module level
    lazy: list[tuple[int, str]] = field(default_factory=list)  # (line, module) imported inside a function
    private: list[tuple[int, str]] = field(default_factory=list)  # (line, "module._name")
    third_party: set[str] = field(default_factory=set)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: Module, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.name.split(".")
    if not module.path.name == "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _walk(module: Module, nodes: list[ast.stmt], *, in_function: bool, known: set[str]) -> None:
    for node in nodes:
        if isinstance(node, ast.If) and _is_type_checking(node):
            continue  # back edges for the type checker only
        if isinstance(node, ast.Import | ast.ImportFrom):
            targets: list[tuple[str, list[str]]] = []
            if isinstance(node, ast.Import):
                targets = [(alias.name, []) for alias in node.names]
            else:
                source = _resolve(module, node)
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    if submodule in known:
                        targets.append((submodule, []))
                    else:
                        targets.append((source, [alias.name]))
            for target, names in targets:
                ours = target == "gateway" or target.startswith("gateway.")
                if in_function:
                    module.lazy.append((node.lineno, target))
                elif ours:
                    module.imports.add(target)
                else:
                    module.third_party.add(target)
                for name in names:
                    if ours and name.startswith("_") and not name.startswith("__") and target != module.name:
                        module.private.append((node.lineno, f"{target}.{name}"))
            continue
        inner = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child_field in ("body", "orelse", "finalbody", "handlers"):
            children = getattr(node, child_field, None)
            if isinstance(children, list):
                statements = [c for c in children if isinstance(c, ast.stmt | ast.ExceptHandler)]
                flat: list[ast.stmt] = []
                for statement in statements:
                    if isinstance(statement, ast.ExceptHandler):
                        flat.extend(statement.body)
                    else:
                        flat.append(statement)
                _walk(module, flat, in_function=in_function or inner, known=known)


def _modules() -> dict[str, Module]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {_module_name(path) for path in paths}
    modules: dict[str, Module] = {}
    for path in paths:
        module = Module(_module_name(path), path, ast.parse(path.read_text(encoding="utf-8")))
        _walk(module, module.tree.body, in_function=False, known=known)
        modules[module.name] = module
    for module in modules.values():  # "from gateway import metrics" names the module, not the package
        module.imports = {name for name in module.imports if name in modules}
    return modules


MODULES = _modules()


def _edges(name: str) -> set[str]:
    """What importing `name` imports from the package (a package's parents run first, which is not a cycle)."""
    return {target for target in MODULES[name].imports if not name.startswith(target + ".")}


def _cycle_from(start: str) -> list[str] | None:
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        current, path = stack.pop()
        for target in _edges(current):
            if target == start:
                return [*path, start]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*path, target]))
    return None


def test_the_walk_sees_the_package() -> None:
    assert "gateway.webhooks" in MODULES and "gateway.providers.registry" in MODULES
    assert "gateway.providers.registry" in MODULES["gateway.webhooks"].imports


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_import_cycles(name: str) -> None:
    assert _cycle_from(name) is None, " -> ".join(_cycle_from(name) or [])


def test_no_lazy_imports_of_our_own_modules() -> None:
    ours = [
        f"{module.name}:{line} {target}"
        for module in MODULES.values()
        for line, target in module.lazy
        if target == "gateway" or target.startswith("gateway.")
    ]
    assert ours == []


def test_lazy_imports_are_few_and_only_in_the_command_line() -> None:
    lazy = [(module.name, line, target) for module in MODULES.values() for line, target in module.lazy]
    assert len(lazy) <= MAX_LAZY_IMPORTS, lazy
    assert [entry for entry in lazy if not entry[0].startswith("gateway.cli")] == []


def test_no_module_imports_another_modules_private_helper() -> None:
    found = [f"{module.name}:{line} {name}" for module in MODULES.values() for line, name in module.private]
    assert found == []


def _providers() -> Iterator[Module]:
    return (module for name, module in MODULES.items() if name.startswith("gateway.providers"))


def test_carriers_import_only_errors_inbound_and_providers() -> None:
    found = [
        f"{module.name} imports {target}"
        for module in _providers()
        for target in module.imports
        if not target.startswith(PROVIDER_MAY_IMPORT)
    ]
    assert found == []


def test_carriers_import_no_io_library() -> None:
    found = [
        f"{module.name} imports {target}"
        for module in _providers()
        for target in module.third_party
        if target.split(".")[0] in IO_LIBRARIES or target in IO_LIBRARIES
    ]
    assert found == []


def _is_edge(name: str) -> bool:
    return name in EDGE or name.startswith(EDGE_PACKAGES)


@pytest.mark.parametrize("name", sorted(STORAGE))
def test_storage_imports_no_edge_module(name: str) -> None:
    assert name in MODULES, f"{name} is listed as storage but does not exist"
    assert sorted(target for target in MODULES[name].imports if _is_edge(target)) == []


def test_only_the_command_line_imports_the_command_line() -> None:
    found = [
        f"{module.name} imports {target}"
        for module in MODULES.values()
        for target in module.imports
        if target.startswith("gateway.cli") and not module.name.startswith(("gateway.cli", "gateway.__main__"))
    ]
    assert found == []


def _docstrings(tree: ast.Module) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _names_a_carrier(module: Module) -> bool:
    docstrings = _docstrings(module.tree)
    for node in ast.walk(module.tree):
        texts: list[str] = []
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            texts.append(node.value)
        elif isinstance(node, ast.Name):
            texts.append(node.id)
        elif isinstance(node, ast.Attribute):
            texts.append(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            texts.append(node.name)
        elif isinstance(node, ast.alias):
            texts.append(node.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            texts.append(node.module)
        if any(carrier in text.lower() for text in texts for carrier in CARRIER_NAMES):
            return True
    return False


def test_few_modules_outside_the_providers_name_a_carrier() -> None:
    aware = sorted(
        name
        for name, module in MODULES.items()
        if not name.startswith("gateway.providers") and _names_a_carrier(module)
    )
    assert len(aware) <= MAX_CARRIER_AWARE, aware


def test_every_carrier_is_in_the_registry_with_its_own_file() -> None:
    assert set(CARRIERS) == set(Provider)
    for provider, spec in CARRIERS.items():
        assert spec.provider is provider
        assert f"gateway.providers.{provider.value}" in MODULES


def _code_map() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Code map")
    end = readme.index("\n## ", start + 1)
    return readme[start:end]


def test_the_readme_code_map_names_every_module() -> None:
    named = set(re.findall(r"`(?!tests/)(?:[a-z_]+/)?([a-z_]+\.py)`", _code_map()))
    files = {path.name for path in PACKAGE.rglob("*.py") if path.name not in ("__init__.py", "__main__.py")}
    assert sorted(files - named) == [], "modules missing from README's code map"
    assert sorted(named - files - {"__init__.py"}) == [], "README's code map names modules that do not exist"

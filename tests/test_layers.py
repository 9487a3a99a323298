"""The layers of docs/architecture.md hold: each package imports only from those below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Higher may import lower (and its own package); equal ranks do not import each other.
RANKS = {
    # Metrics, health checks and log fields: below everything, so every layer can record.
    "bot.observability": -1,
    "bot.storage": 0,
    "bot.backends": 0,
    "bot.media": 0,
    "bot.core": 1,
    "bot.owner": 2,
    "bot.texts": 3,
    "bot.app": 4,
    "bot.__main__": 5,
    "cogs": 6,
}
# The stores build the core's domain objects and mask what they store; none of these
# import anything of the core's logic (checked below too).
DOMAIN = {"bot.core.jobs", "bot.core.eta", "bot.core.redaction"}
DISCORD_ALLOWED = {"bot.app.client", "bot.__main__"}


def _modules() -> dict[str, Path]:
    """Every module of the bot and the cogs, by dotted name."""
    found = {}
    for package in ("bot", "cogs"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if name != "bot":  # the empty root package belongs to no layer
                found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    """The modules a file imports at run time or for type checking."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            # `from bot import media` names a module, not an attribute.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _layer(module: str) -> str | None:
    """The layer a module belongs to."""
    for layer in sorted(RANKS, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_from_its_own_layer_or_below(module: str) -> None:
    layer = _layer(module)
    assert layer is not None, f"{module} belongs to no layer of docs/architecture.md"
    wrong = []
    for imported in _imports(MODULES[module]):
        other = _layer(imported)
        if other is None or other == layer or imported not in MODULES:
            continue
        if layer == "bot.storage" and imported in DOMAIN:
            continue
        if RANKS[other] >= RANKS[layer]:
            wrong.append(imported)
    assert not wrong, f"{module} imports from a layer above or beside it: {sorted(wrong)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("bot")))
def test_only_the_bot_class_and_the_entry_point_import_discord(module: str) -> None:
    uses_discord = any(
        name == "discord" or name.startswith("discord.") for name in _imports(MODULES[module])
    )
    assert not uses_discord or module in DISCORD_ALLOWED


@pytest.mark.parametrize("module", sorted(DOMAIN))
def test_the_domain_the_stores_use_imports_no_core_logic(module: str) -> None:
    inside = {name for name in _imports(MODULES[module]) if name in MODULES}
    assert inside <= DOMAIN, f"{module} imports {sorted(inside - DOMAIN)}"


def test_no_module_is_over_about_400_lines() -> None:
    long = {
        name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 420
    }
    assert not long

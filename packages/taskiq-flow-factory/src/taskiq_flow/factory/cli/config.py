"""``taskiq-flow config``: every setting in effect and where it came from."""

from __future__ import annotations

import argparse
from typing import TextIO

from taskiq_flow.config import TaskiqFlowConfig
from taskiq_flow.factory.builder import DEFAULT_SQLITE_PATH
from taskiq_flow.factory.cli._common import (
    EXIT_OK,
    Subcommands,
    add_command,
    describe_cache,
    describe_storage,
    print_json,
    wants_json,
)

__all__ = ["add_parser", "run"]


def add_parser(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    """Add the ``config`` command to ``commands``, with the ``common`` options."""
    add_command(
        commands,
        common,
        "config",
        summary="show the settings in effect and where each came from",
        description="Print every setting, its value (passwords masked), its environment "
        "variable and whether it came from a flag, the environment or the default. "
        "Then the TASKIQ_FLOW_* variables no setting reads, with the closest known name. "
        "Exit code 2 if a variable is invalid.",
    )


async def run(args: argparse.Namespace, config: TaskiqFlowConfig, out: TextIO) -> int:
    """Print each setting's variable, value and source, then the backends they select."""
    rows = []
    for item in TaskiqFlowConfig.settings():
        name = item["name"]
        value = config.to_dict()[name]
        source: str = config.source_of(name)
        if (
            name == "storage_sqlite_path"
            and value == DEFAULT_SQLITE_PATH
            and source != "environment"
        ):
            source = "cli default"
        rows.append({"name": name, "env_var": item["env_var"], "value": value, "source": source})
    resolved = {"storage": config.resolved_storage_type, "cache": config.resolved_cache_type}
    unknown = [{"name": name, "did_you_mean": close} for name, close in config.unknown_variables]
    if wants_json(args):
        print_json(out, {"settings": rows, "resolved": resolved, "unknown_variables": unknown})
        return EXIT_OK
    for row in rows:
        out.write(f"{row['env_var']:<34}{row['value']!s:<34}{row['source']}\n")
    out.write(f"\nstorage backend: {describe_storage(config)}\n")
    out.write(f"cache backend:   {describe_cache(config)}\n")
    if unknown:
        out.write("\nunknown variables (ignored; TASKIQ_FLOW_STRICT_CONFIG=true refuses them):\n")
        for item in unknown:
            hint = f"did you mean {item['did_you_mean']}?" if item["did_you_mean"] else ""
            out.write(f"  {item['name']:<32}  {hint}".rstrip() + "\n")
    return EXIT_OK

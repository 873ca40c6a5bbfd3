"""``walstream new-agent NAME``: a new use-case agent and its unit test, from templates.

The templates (``agent.py.tmpl``, ``test_agent.py.tmpl``) are a working agent: it consumes
its own input topic, keeps per-key state in a changelogged table, applies each record once
per key even when Kafka delivers it again, and its test runs it on both table stores with
Faust's ``test_context``. docs/agents.md explains each part.
"""

from __future__ import annotations

import importlib.util
import keyword
import re
import sys
from importlib.resources import files
from pathlib import Path

#: an agent's name: a Python module name that is also fine in topic and table names
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
#: names of what the generated modules import
_TAKEN = frozenset({"walstream", "faust", "orjson", "pytest", "mode", "aiokafka"})


class ScaffoldError(ValueError):
    """The agent cannot be created; the message says why and what to do."""


def new_agent(name: str, directory: Path) -> list[Path]:
    """Write ``<directory>/<name>.py`` and ``<directory>/test_<name>.py``; returns them.

    Raises :class:`ScaffoldError` for a name that is not a lower-case module name, a
    directory that does not exist, or a file that exists already (never overwritten)."""
    if not NAME_RE.match(name) or keyword.iskeyword(name):
        raise ScaffoldError(f"{name!r} is not an agent name: use a lower-case Python module name "
                            "([a-z][a-z0-9_]*, at most 40 characters), e.g. audit_trail")
    if name in sys.stdlib_module_names or name in _TAKEN or importlib.util.find_spec(name) is not None:
        raise ScaffoldError(f"{name!r} is the name of a module the agent's test imports or can reach "
                            "(its module would shadow it): choose another, e.g. {name}_agent".replace("{name}", name))
    if not directory.is_dir():
        raise ScaffoldError(f"{directory} is not a directory: create it, or give another with --dir")
    out = {directory / f"{name}.py": "agent.py.tmpl", directory / f"test_{name}.py": "test_agent.py.tmpl"}
    taken = [str(p) for p in out if p.exists()]
    if taken:
        raise ScaffoldError(f"{', '.join(taken)} exists already: choose another name or --dir")
    for path, template in out.items():
        text = files(__package__).joinpath(template).read_text(encoding="utf-8")
        path.write_text(text.replace("{{name}}", name), encoding="utf-8")
    return list(out)

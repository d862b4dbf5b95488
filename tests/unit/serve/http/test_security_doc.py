"""docs/security.md lists every route with the roles the code allows, exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from contracts.access import Role
from serve.http import create_api
from serve.http.auth import route_roles

DOC = Path(__file__).resolve().parents[4] / "docs" / "security.md"


def render_route_table() -> str:
    """The markdown table of docs/security.md, from the app's own route declarations."""
    table = route_roles(create_api(cast(Any, None)))
    lines = [
        "| method | path | fleet manager | technician | customer | ops |",
        "| --- | --- | :-: | :-: | :-: | :-: |",
    ]
    for (method, path), roles in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cells = ["open"] * 4 if roles == ("public",) else ["yes" if r.value in roles else "—" for r in Role]
        lines.append(f"| {method} | `{path}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_the_route_table_in_the_docs_is_the_code() -> None:
    doc = DOC.read_text(encoding="utf-8")
    start = doc.index("<!-- route-table:start -->\n") + len("<!-- route-table:start -->\n")
    end = doc.index("\n<!-- route-table:end -->")
    assert doc[start:end] == render_route_table(), (
        "docs/security.md's route table is out of date; paste render_route_table() into it."
    )

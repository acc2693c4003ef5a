"""The report's "Raft rules" section: a row per check of :mod:`harness.raft_checks`.

Kept apart from :mod:`harness.report` so the two can change independently. Each row says what
the check saw; a check without data is "not applicable", never "held".
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.report_data import Run

LABELS = {True: "held", False: "BROKEN", None: "not applicable"}


def _e(value: Any) -> str:
    if value is None:
        return ""
    return html.escape(value if isinstance(value, str) else json.dumps(value, default=str))


def result_label(ok: Any) -> str:
    """How a check's ``ok`` reads in the report."""
    return LABELS.get(ok, "unknown") if isinstance(ok, bool | None) else "unknown"


def section_raft(run: Run) -> str:
    """The table of Raft checks, broken ones first, with their violations below it."""
    raft = run.results.get("raft")
    checks = raft.get("checks") if isinstance(raft, dict) else None
    if not isinstance(checks, list) or not checks:
        reason = raft.get("reason") if isinstance(raft, dict) else None
        text = f"Raft checks: unknown ({reason})" if reason else "No Raft checks in results.json."
        return f'<p class="missing">{_e(text)}</p>'
    items = sorted(
        (c for c in checks if isinstance(c, dict)), key=lambda c: c.get("ok") is not False
    )
    rows = "".join(
        f"<tr><td>{_e(c.get('name'))}</td><td>{_e(result_label(c.get('ok')))}</td>"
        f"<td>{_e(c.get('saw'))}</td></tr>"
        for c in items
    )
    out = [f"<table><tr><th>check</th><th>result</th><th>what it saw</th></tr>{rows}</table>"]
    for c in items:
        found = c.get("violations")
        if c.get("ok") is False and isinstance(found, list) and found:
            count = c.get("violation_count", len(found))
            lines = "".join(f"<li><code>{_e(v)}</code></li>" for v in found)
            out.append(
                f"<details open><summary>{_e(c.get('name'))}: {_e(count)} violation(s)"
                f"</summary><ul>{lines}</ul></details>"
            )
    return "".join(out)

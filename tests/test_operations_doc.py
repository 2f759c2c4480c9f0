"""docs/operations.md cannot drift from the code: every setting and every metric is in its tables.

- the settings table lists exactly KNOWN_NAMES plus the few environment-only names the
  code reads (GATEWAY_CONFIG, GATEWAY_EMBEDDED_DIR, PROMETHEUS_MULTIPROC_DIR), and
  every quoted GATEWAY_* name in gateway/ is among them;
- where a setting maps to a Settings field with a simple default, the table shows it;
- the metrics table lists every metric gateway/metrics.py declares, by its exposed name,
  with its type and every label name.
"""

from __future__ import annotations

import dataclasses
import re

from prometheus_client.metrics import MetricWrapperBase

from gateway import metrics
from gateway.settings import KNOWN_NAMES, Settings
from tests.helpers.support import REPO

DOC = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
ENVIRONMENT_ONLY = {"GATEWAY_CONFIG", "GATEWAY_EMBEDDED_DIR", "PROMETHEUS_MULTIPROC_DIR"}


def section(title: str) -> str:
    start = DOC.index(f"\n## {title}\n")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end != -1 else None]


def table_rows(text: str) -> dict[str, list[str]]:
    """First-column name (in backticks) → the row's cells, for every row of every table in `text`."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        names = re.findall(r"`([^`]+)`", cells[0])
        assert len(names) == 1, f"one name per row, please: {line}"
        assert names[0] not in rows, f"listed twice: {names[0]}"
        rows[names[0]] = cells
    return rows


SETTINGS = table_rows(section("Settings"))
METRICS = table_rows(section("Metrics"))


def test_every_setting_is_in_the_table() -> None:
    expected = set(KNOWN_NAMES) | ENVIRONMENT_ONLY
    assert sorted(expected - set(SETTINGS)) == [], "missing from docs/operations.md"
    assert sorted(set(SETTINGS) - expected) == [], "documented but not a setting"


def test_every_environment_name_the_code_reads_is_documented() -> None:
    used: set[str] = set()
    for path in (REPO / "gateway").rglob("*.py"):
        used |= set(re.findall(r"[\"']((?:GATEWAY|PROMETHEUS|EXOTEL)_[A-Z0-9_]+)[\"']", path.read_text("utf-8")))
    assert sorted(used - set(SETTINGS)) == []


def _field_for(name: str) -> dataclasses.Field[object] | None:
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    return fields.get(name.lower().removeprefix("gateway_"))


def test_simple_defaults_match_the_code() -> None:
    """Settings fields named like the variable, with an int/float/bool/one-line str default."""
    checked, wrong = 0, []
    for name in sorted(KNOWN_NAMES):
        field = _field_for(name)
        if field is None or field.default is dataclasses.MISSING:
            continue  # e.g. the per-carrier answer modes: a mapping, described in words
        default = field.default
        if isinstance(default, bool):
            shown = "true" if default else "false"
        elif isinstance(default, int | float):
            shown = str(default)
        elif isinstance(default, str) and default and "\n" not in default:
            shown = default
        else:
            continue  # None / templates: described in words
        checked += 1
        if f"`{shown}`" not in SETTINGS[name][1]:
            wrong.append(f"{name}: the code's default is {shown!r}, the table says {SETTINGS[name][1]!r}")
    assert not wrong
    assert checked >= 30


def _metric_objects() -> list[MetricWrapperBase]:
    return [value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)]


def test_every_metric_is_in_the_table_with_its_type_and_labels() -> None:
    declared = _metric_objects()
    assert len(declared) >= 15
    exposed: set[str] = set()
    for metric in declared:
        kind = metric._type  # counter | gauge | histogram
        name = metric._name + ("_total" if kind == "counter" else "")
        exposed.add(name)
        assert name in METRICS, f"{name} is not documented"
        cells = METRICS[name]
        assert cells[1] == kind, f"{name}: documented as {cells[1]}, is a {kind}"
        for label in metric._labelnames:
            assert f"`{label}`" in cells[2], f"{name}: label {label} not documented"
        if not metric._labelnames:
            assert cells[2] == "—", f"{name} has no labels"
    assert sorted(set(METRICS) - exposed) == [], "documented but not declared"


def test_documented_label_values_exist() -> None:
    """The reason and outcome vocabularies in the table are the code's."""
    from gateway.errors import Reason

    reasons = METRICS["gateway_rejections_total"][2]
    for reason in Reason:
        assert reason.value in reasons
    outcomes = METRICS["gateway_requests_total"][2]
    for outcome in metrics.OUTCOMES:
        assert outcome in outcomes
    for mismatch in metrics.MISMATCHES:
        assert mismatch in METRICS["gateway_signature_mismatch_total"][2]
    for result in metrics.ANSWER_RESULTS:
        assert result in METRICS["gateway_answers_total"][2]

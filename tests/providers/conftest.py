"""Parametrize provider tests with the shared conformance vectors (shared/vectors/carriers.json).

A test module sets `VECTOR_PROVIDERS = ("plivo", ...)` and takes a `vector_step`
(one step of one case) or a `vector_case` argument; for a selection, it parametrizes
another argument with `vector_steps(...)` / `vector_cases(...)` and a `where` filter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest

from tests.helpers import support

# Verdicts that depend on state only the Redis layer has (a nonce seen before, an event
# already forwarded, a phone id nobody registered): the HTTP tests cover those steps.
APP_ONLY_ORACLES = ("rule: nonce single use", "rule: idempotency", "rule: fail closed")


@cache
def load_vectors() -> Mapping[str, Any] | None:
    """The carrier vectors kept in tests/vectors/ (one loader: tests/helpers/support.py)."""
    document: Mapping[str, Any] = support.load_vectors()
    return document


@dataclass(frozen=True)
class VectorStep:
    case: Mapping[str, Any]
    index: int

    @property
    def step(self) -> Mapping[str, Any]:
        steps: list[Mapping[str, Any]] = self.case["steps"]
        return steps[self.index]

    @property
    def request(self) -> Mapping[str, Any]:
        request: Mapping[str, Any] = self.step["request"]
        return request

    @property
    def expected(self) -> str:
        return str(self.step["expected"])


_MISSING = pytest.param(None, marks=pytest.mark.skip(reason="carriers.json not found (shared/ or $GATEWAY_VECTORS)"))


def _cases(
    providers: Iterable[str], where: Callable[[Mapping[str, Any]], bool] | None
) -> list[Mapping[str, Any]] | None:
    document = load_vectors()
    if document is None:
        return None
    wanted = set(providers)
    return [c for c in document["cases"] if c["provider"] in wanted and (where is None or where(c))]


def vector_cases(
    providers: Iterable[str], where: Callable[[Mapping[str, Any]], bool] | None = None
) -> list[pytest.ParameterSet]:
    """One param per case of `providers` (that `where` keeps)."""
    cases = _cases(providers, where)
    if cases is None:
        return [_MISSING]
    return [pytest.param(case, id=case["id"]) for case in cases]


def vector_steps(
    providers: Iterable[str], where: Callable[[VectorStep], bool] | None = None
) -> list[pytest.ParameterSet]:
    """One param per step of `providers`' cases (that `where` keeps).

    Without `where`, a rejecting step whose verdict needs the Redis layer is skipped.
    """
    cases = _cases(providers, None)
    if cases is None:
        return [_MISSING]
    params = []
    for case in cases:
        for index, step in enumerate(case["steps"]):
            item = VectorStep(case, index)
            if where is not None and not where(item):
                continue
            marks = []
            if where is None and step["expected"] == "reject" and case["oracle"].startswith(APP_ONLY_ORACLES):
                marks.append(pytest.mark.skip(reason=f"{case['oracle']}: decided by the Redis layer (HTTP tests)"))
            params.append(pytest.param(item, id=f"{case['id']}-{index}", marks=marks))
    return params


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`vector_step` / `vector_case` arguments get every step / case of VECTOR_PROVIDERS."""
    providers = getattr(metafunc.module, "VECTOR_PROVIDERS", ())
    if "vector_step" in metafunc.fixturenames:
        metafunc.parametrize("vector_step", vector_steps(providers) or [_MISSING])
    if "vector_case" in metafunc.fixturenames:
        metafunc.parametrize("vector_case", vector_cases(providers) or [_MISSING])


@pytest.fixture
def vectors() -> Mapping[str, Any]:
    document = load_vectors()
    if document is None:
        pytest.skip("carriers.json not found (shared/ or $GATEWAY_VECTORS)")
    return document

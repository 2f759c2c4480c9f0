"""Signature and rejection diagnoses on the request path: bounded in CPU, counted, logged
at a limited rate, never changing the answer.

The webhook handler calls `MismatchExplainer` after a well-formed signature of a known
phone failed (gateway/diagnostics/mismatch.py finds the variant that would have
verified) and for every other refusal of a known phone (gateway/diagnostics/rejection.py).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from gateway import metrics
from gateway.diagnostics.mismatch import (
    FAILED,
    MAX_VARIANTS,
    NO_MATCH,
    NOT_URL_SIGNED,
    OVER_BUDGET,
    Diagnosis,
    NotDiagnosed,
    search,
)
from gateway.diagnostics.rejection import DIAGNOSED, Context, Finding
from gateway.diagnostics.rejection import diagnose as diagnose_rejection
from gateway.diagnostics.variants import SUPPORTED
from gateway.errors import Reason
from gateway.inbound import InboundRequest
from gateway.log_safety import loggable
from gateway.providers import PhoneCredentials, Verifier
from gateway.settings import PublicBase

log = logging.getLogger("gateway.explain")  # the name operators filter on (docs/explain-and-sign.md)


class _Bucket:
    """Token bucket: refills `rate` per second of `clock`, holds at most `burst`."""

    __slots__ = ("_burst", "_clock", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def take(self) -> bool:
        """Spend one token if there is one."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def has_credit(self) -> bool:
        self._refill()
        return self._tokens > 0.0

    def spend(self, amount: float) -> None:
        self._tokens -= amount  # may go negative: a costly diagnosis is paid back before the next


class MismatchExplainer:
    """Called by the webhook handler after a well-formed signature of a known phone failed.

    Bounded in CPU: diagnoses share a budget of `cpu_share` CPU seconds per second (1% of
    a core by default, with a burst of `cpu_burst_s`), and one diagnosis starts no new
    variant after `max_diagnosis_s` of CPU time nor beyond `max_variants`. Past the budget, failures
    are answered as usual and simply not diagnosed. Counts the matching variant's labels
    in `gateway_signature_mismatch_total` and logs one WARNING per phone and mismatch per
    `log_interval_s` (and at most `log_rate_per_s` overall), never a secret.
    Never raises, never changes the answer.
    """

    def __init__(
        self,
        public_base: PublicBase | None = None,
        *,
        max_variants: int = MAX_VARIANTS,
        cpu_share: float = 0.01,
        cpu_burst_s: float = 0.05,
        max_diagnosis_s: float = 0.002,
        log_interval_s: float = 60.0,
        log_rate_per_s: float = 1.0,
        log_burst: float = 30.0,
        max_log_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        timer: Callable[[], float] = time.thread_time,  # CPU time: waiting for the CPU costs no budget
        report_undiagnosed: bool = False,  # the request inspector's: return NotDiagnosed rather than None
        context: Context | None = None,  # what other refusals are diagnosed with (`rejection`)
    ) -> None:
        self._context = context if context is not None else Context()
        self._report_undiagnosed = report_undiagnosed
        self._public_base = public_base
        self._max_variants = max_variants
        self._budget = _Bucket(cpu_share, cpu_burst_s, clock)
        self._max_diagnosis_s = max_diagnosis_s
        self._timer = timer
        self._log_budget = _Bucket(log_rate_per_s, log_burst, clock)
        self._log_interval_s = log_interval_s
        self._max_log_keys = max_log_keys
        self._clock = clock
        # (phone id, variant label) -> [last logged at, warnings suppressed since]
        self._logged: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self._suppressed_globally = 0

    def __call__(
        self, inbound: InboundRequest, creds: PhoneCredentials, verifier: Verifier, now: float
    ) -> Diagnosis | NotDiagnosed | None:
        found = self.explain(inbound, creds, verifier, now)
        return found if self._report_undiagnosed or isinstance(found, Diagnosis) else None

    def explain(
        self, inbound: InboundRequest, creds: PhoneCredentials, verifier: Verifier, now: float
    ) -> Diagnosis | NotDiagnosed:
        """`__call__`, and when nothing matched, why (for the request inspector): same work, metric and log."""
        if creds.provider not in SUPPORTED:
            return NotDiagnosed(creds.provider, NOT_URL_SIGNED)
        try:
            if not self._budget.has_credit():
                return NotDiagnosed(creds.provider, OVER_BUDGET)
            started = self._timer()
            try:
                diagnosis, tried = search(
                    inbound,
                    creds,
                    verifier,
                    now,
                    public_base=self._public_base,
                    limit=self._max_variants,
                    deadline=started + self._max_diagnosis_s,
                    timer=self._timer,
                )
            finally:
                self._budget.spend(self._timer() - started)
            if diagnosis is None:
                return NotDiagnosed(creds.provider, NO_MATCH, tried)
            for label in diagnosis.labels:
                metrics.MISMATCH.labels(diagnosis.provider.value, label).inc()
            notes = [f"key {diagnosis.key_fingerprint or '-'}", "request rejected (403)"]
            self._warn(creds.phone_id, diagnosis.variant.label, diagnosis.message(), notes)
            return diagnosis
        except Exception as exc:  # a diagnosis bug must never turn a 403 into a 500
            log.error("signature mismatch diagnosis failed (%s); the request was rejected as usual", type(exc).__name__)
            return NotDiagnosed(creds.provider, FAILED)

    def rejection(
        self,
        reason: Reason,
        inbound: InboundRequest,
        creds: PhoneCredentials,
        verifier: Verifier,
        now: float,
        peer: str | None = None,
    ) -> Finding | NotDiagnosed | None:
        """Any other refusal of a known phone (gateway/diagnostics/rejection.py: a stale timestamp, no
        signature, a source address or token refused): the same CPU budget and log limits, no metric
        (`gateway_rejections_total{reason}` already counts them). Never raises, never changes the answer."""
        if reason not in DIAGNOSED:
            return None
        try:
            if not self._budget.has_credit():
                return NotDiagnosed(creds.provider, OVER_BUDGET) if self._report_undiagnosed else None
            started = self._timer()
            try:
                found = diagnose_rejection(reason, inbound, creds, verifier, now, self._context, peer=peer)
            finally:
                self._budget.spend(self._timer() - started)
            if found is None:
                return None
            notes = [f"key {found.key_fingerprint}"] if found.key_fingerprint else []
            self._warn(creds.phone_id, reason.value, found.message(), [*notes, f"request rejected ({found.status})"])
            return found
        except Exception as exc:  # a diagnosis bug must never change the answer
            log.error("rejection diagnosis failed (%s); the request was rejected as usual", type(exc).__name__)
            return NotDiagnosed(creds.provider, FAILED) if self._report_undiagnosed else None

    def _warn(self, phone_id: str, label: str, message: str, details: list[str]) -> None:
        key = (phone_id, label)
        now = self._clock()
        entry = self._logged.get(key)
        if entry is not None and now - entry[0] < self._log_interval_s:
            entry[1] += 1
            return
        if not self._log_budget.take():
            self._suppressed_globally += 1
            return
        suppressed = int(entry[1]) if entry is not None else 0
        self._logged[key] = [now, 0]
        self._logged.move_to_end(key)
        while len(self._logged) > self._max_log_keys:
            self._logged.popitem(last=False)
        notes = [f"phone {phone_id}", *details]
        if suppressed:
            notes.append(f"{suppressed} more like it in the last {self._log_interval_s:.0f}s")
        if self._suppressed_globally:
            notes.append(f"{self._suppressed_globally} other mismatch warnings suppressed")
            self._suppressed_globally = 0
        log.warning("%s (%s)", loggable(message, limit=1024), loggable("; ".join(notes), limit=1024))

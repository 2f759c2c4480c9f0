"""Locust scenario: a realistic mix of signed carrier callbacks, plus a few forged ones.

One command (private Redis + gateway + phones + headless Locust + checks, results in
loadtests/results/locust*):

    python -m loadtests.run_locust --users 50 --duration 60s

Against a gateway you run yourself (it must trust the load generator's X-Forwarded-For,
be told its public URL, and allow Exotel's documentation-range source):

    GATEWAY_TRUSTED_PROXIES=127.0.0.1/32 GATEWAY_PUBLIC_BASE_URL=https://hooks.example.com \\
    EXOTEL_ALLOWED_IPS=203.0.113.0/24 GATEWAY_ADMIN_TOKEN=... gateway serve
    GATEWAY_ADMIN_TOKEN=... locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 60s \\
        --host http://127.0.0.1:8080 --csv loadtests/results/locust --html loadtests/results/locust.html

With GATEWAY_ADMIN_TOKEN set, the phones are registered through the admin API when the
test starts (loadtests/phones.py; `python -m loadtests.phones` does it alone).

Mix (weights): mostly status callbacks (Plivo, Vobiz, Twilio), some answer URLs, Telnyx
events (by phone and by number), Exotel passthru from an allowlisted address; about 6%
forged (wrong key, stale Telnyx timestamp, Exotel from outside the allowlist or with a
wrong token, an unknown phone). Every request has a fresh nonce / event id / CallUUID
and a current timestamp. A forged request answered 2xx is a failure, and so is a valid
one answered anything but 200. About 1% are exact copies of an accepted Plivo request
(a carrier's retry, or a replay): answered 200 as the duplicate it is, and never
forwarded again (run_locust.py checks the stream and the duplicate count).
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from locust import FastHttpUser, between, events, task

from loadtests import phones as lt_phones
from loadtests import signed

PHONES = lt_phones.all_phones(int(os.environ.get("LOADTEST_PHONES_PER_PROVIDER", "8")))


@events.test_start.add_listener
def register_phones(environment: Any, **_kwargs: Any) -> None:
    token = os.environ.get("GATEWAY_ADMIN_TOKEN")
    if token and environment.host:
        phones = [phone for group in PHONES.values() for phone in group]
        lt_phones.register(os.environ.get("GATEWAY_ADMIN_URL", environment.host), token, phones)


class Carrier(FastHttpUser):
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.run_id = random.getrandbits(40)
        self.counter = 0
        self.last_plivo: signed.SignedRequest | None = None

    # ---- plumbing ------------------------------------------------------------------------------

    def _next(self) -> int:
        self.counter += 1
        return self.counter

    def send(self, request: signed.SignedRequest) -> None:
        with self.client.request(
            request.method,
            request.target,
            name=request.name,
            headers=request.headers,
            data=request.body or None,
            catch_response=True,
        ) as response:
            status = response.status_code
            if request.forged:
                if 200 <= status < 300:
                    response.failure(f"{signed.FORGED_ACCEPTED}: {status}")
                elif status in (401, 403):
                    response.success()
                else:
                    response.failure(f"forged request answered {status}, expected 401/403")
            elif status == 200:
                response.success()
            else:
                response.failure(f"valid request answered {status}")

    def plivo(self, provider: str, kind: str, *, forge: bool = False) -> signed.SignedRequest:
        i = self._next()
        phone = random.choice(PHONES[provider])
        uuid = signed.call_uuid(self.run_id, i)
        params = signed.plivo_status_params(uuid) if kind == "status" else signed.plivo_answer_params(uuid)
        return signed.plivo_request(phone, kind, params, signed.nonce(self.run_id, i), forge=forge)

    # ---- valid traffic ---------------------------------------------------------------------------

    @task(30)
    def plivo_status(self) -> None:
        request = self.plivo("plivo", "status")
        self.send(request)
        self.last_plivo = request

    @task(5)
    def plivo_answer(self) -> None:
        self.send(self.plivo("plivo", "incoming"))

    @task(8)
    def vobiz_status(self) -> None:
        self.send(self.plivo("vobiz", "status"))

    @task(15)
    def twilio_status(self) -> None:
        sid = "CA" + signed.call_uuid(self.run_id, self._next()).replace("-", "")
        self.send(signed.twilio_request(random.choice(PHONES["twilio"]), "status", sid))

    @task(3)
    def twilio_answer(self) -> None:
        sid = "CA" + signed.call_uuid(self.run_id, self._next()).replace("-", "")
        self.send(signed.twilio_request(random.choice(PHONES["twilio"]), "incoming", sid))

    @task(12)
    def telnyx_event(self) -> None:
        event_id = signed.call_uuid(self.run_id, self._next())
        self.send(signed.telnyx_request(random.choice(PHONES["telnyx"]), event_id, int(time.time())))

    @task(4)
    def telnyx_by_number(self) -> None:
        event_id = signed.call_uuid(self.run_id, self._next())
        phone = random.choice(PHONES["telnyx"])
        self.send(signed.telnyx_request(phone, event_id, int(time.time()), by_number=True, event_type="call.initiated"))

    @task(6)
    def exotel_status(self) -> None:
        sid = signed.call_uuid(self.run_id, self._next()).replace("-", "")
        self.send(signed.exotel_request(random.choice(PHONES["exotel"]), "status", sid))

    @task(3)
    def exotel_passthru(self) -> None:
        sid = signed.call_uuid(self.run_id, self._next()).replace("-", "")
        self.send(signed.exotel_request(random.choice(PHONES["exotel"]), "incoming", sid))

    # ---- forged traffic (must be refused) -------------------------------------------------------

    @task(1)
    def forged_plivo(self) -> None:
        self.send(self.plivo("plivo", "status", forge=True))

    @task(1)
    def forged_twilio(self) -> None:
        sid = "CA" + signed.call_uuid(self.run_id, self._next()).replace("-", "")
        self.send(signed.twilio_request(random.choice(PHONES["twilio"]), "status", sid, forge=True))

    @task(1)
    def forged_telnyx(self) -> None:
        event_id = signed.call_uuid(self.run_id, self._next())
        forge = random.choice(["signature", "stale"])
        self.send(signed.telnyx_request(random.choice(PHONES["telnyx"]), event_id, int(time.time()), forge=forge))

    @task(1)
    def forged_exotel(self) -> None:
        sid = signed.call_uuid(self.run_id, self._next()).replace("-", "")
        forge = random.choice(["ip", "token"])
        self.send(signed.exotel_request(random.choice(PHONES["exotel"]), "status", sid, forge=forge))

    @task(1)
    def replayed_plivo(self) -> None:
        """An exact copy of an accepted request: the duplicate, answered 200, nothing forwarded."""
        if self.last_plivo is None:
            return
        replay = self.last_plivo
        self.send(signed.SignedRequest(signed.REPLAYED, replay.method, replay.target, replay.headers, replay.body))

    @task(1)
    def unknown_phone(self) -> None:
        i = self._next()
        ghost = lt_phones.Phone("lt_ghost_000", "plivo", {"auth_id": "MAGHOST", "auth_token": "ghost-token-000000"})
        request = signed.plivo_request(
            ghost, "status", signed.plivo_status_params(signed.call_uuid(self.run_id, i)), signed.nonce(self.run_id, i)
        )
        request.name, request.forged = "unknown phone FORGED", True
        self.send(request)

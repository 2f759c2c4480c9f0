"""Diagnostics: why a carrier's signature fails, and how a correct one is built. Pure logic.

`mismatch` diagnoses failed signatures on the request path (never accepts); `capture`
parses captured requests (curl, raw HTTP); `strings_to_sign` shows what a carrier signs;
`report` is `gateway explain`'s report; `signing` builds signed callbacks for `gateway
sign`; `carriers` holds their per-carrier tables; `wire` converts ASGI wire text.
Nothing here reads argv, Redis or the terminal: gateway/cli/ does that.
"""

"""Diagnostics: why a carrier's signature fails, and how a correct one is built. Pure logic.

`mismatch` diagnoses failed signatures on the request path (never accepts); `capture`
parses captured requests (curl, raw HTTP); `strings_to_sign` shows what a carrier signs;
`report` is `gateway explain`'s report; `signing` builds signed callbacks for `gateway
sign`; `wire` converts ASGI wire text. What differs between carriers comes from their
specs (gateway/providers/registry.py): nothing here names a carrier.
Nothing here reads argv, Redis or the terminal: gateway/cli/ does that.
"""

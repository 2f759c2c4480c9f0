"""The request inspector: this worker's recent webhook requests, on the admin port.

docs/why-did-my-callback-fail.md describes it.
"""

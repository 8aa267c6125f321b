"""The outbound path: canonical send -> addressing policy -> provider HTTP request -> answer.

`spec` loads `mappings/<provider>/outbound.yaml`, `template` is the small value language those
files use, `addressing` applies the recipient rules of the canonical contract (§3), `rewrite`
renders the provider request, `client` sends it and maps the answer, `service` orchestrates and
records sends in the store. Nothing here knows a provider by name: every provider fact is data.
"""

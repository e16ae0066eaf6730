"""The one test support package. Test modules import helpers only from here (or take them as
fixtures from tests/conftest.py and tests/reliability/conftest.py); tests/unit/test_test_imports.py
holds that rule.

- world: the environment, account/region, plain clients, the moto world's things (clusters,
  roles, keys, metrics, inboxes), payments-prod's names and changes made behind kip's back
- clock: the one settable Clock
- faults: the wire-protocol fault injector (Strict, Fault/Tap, Crash) and the Calls counter
- snapshots: what exists, normalized, and diffs
- scenario: the reliability world (payments-prod, a tap, the three phases, call enumeration)
- drive: the kit factory and the use-case drivers
- tokens: JWKS server and portal JWTs; templates: the member/hub CloudFormation templates
"""

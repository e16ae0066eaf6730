"""The one test support package: the moto world, the clock, the wire-protocol fault injector,
the kit factory and the use-case drivers. Test modules import helpers only from here (or take
them as fixtures from tests/conftest.py)."""

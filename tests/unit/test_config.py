"""KIP_API_AUTH fails closed: a value kip does not know stops the app instead of dropping auth."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from chalicelib.config import Settings

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value", ["IAM", "iam ", " iam", "Iam", "iamm", "", "off", "NONE", "sigv4"])
def test_unknown_api_auth_is_refused_naming_the_variable(value):
    with pytest.raises(ValueError, match="KIP_API_AUTH"):
        Settings.from_env({"KIP_API_AUTH": value})


@pytest.mark.parametrize("value", ["iam", "none", "jwt"])
def test_known_api_auth_values_are_accepted(value):
    assert Settings.from_env({"KIP_API_AUTH": value}).api_auth == value


def test_api_auth_defaults_to_iam():
    assert Settings.from_env({}).api_auth == "iam"


def test_app_import_with_unknown_api_auth_exits_non_zero_naming_the_variable():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KIP_"))}
    env.update(KIP_API_AUTH="typo", AWS_DEFAULT_REGION="eu-west-1", AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", KIP_TABLE_NAME="kip-clusters-test")
    proc = subprocess.run([sys.executable, "-c", "import app"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "KIP_API_AUTH" in proc.stderr


def test_jwt_auth_puts_an_authorizer_on_every_route():
    """KIP_API_AUTH=jwt must never mean 'no authorization' (it did before it was wired)."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "KIP_API_AUTH": "jwt", "KIP_JWKS_URL": "https://idp.example/jwks",
           "KIP_JWT_ISSUER": "https://idp.example", "KIP_JWT_AUDIENCE": "kip",
           "AWS_DEFAULT_REGION": "eu-west-1"}
    code = ("import app\n"
            "routes = [e for p in app.app.routes.values() for e in p.values()]\n"
            "guarded = [r.authorizer is not None for r in routes]\n"
            "print(len(guarded), all(guarded))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                         timeout=60)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.split()[1] == "True", out.stdout


@pytest.mark.parametrize("value", ["", "-kip", "kip prefix", "k" * 21, "kip/", "kíp-"])
def test_a_prefix_outside_its_pattern_is_refused_naming_the_variable(value):
    # KIP_PREFIX starts every name kip makes: one that breaks a name limit or charset stops the app
    with pytest.raises(ValueError, match="KIP_PREFIX"):
        Settings.from_env({"KIP_PREFIX": value})

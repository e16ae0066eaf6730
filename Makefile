# Every target sets up its own virtualenv from pinned versions first.
PY       ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
MOTO_PORT ?= 5000
API_PORT  ?= 8000
LATENCY_MS ?= 50
# loadgroup: the tests of the built package share one worker, so the package is built once
PYTEST_ARGS ?= -n 2 --dist loadgroup

.PHONY: venv test demo local bench package deploy bootstrap openapi clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip==26.0.1
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: venv
	$(BIN)/python scripts/demo.py --moto-port $(MOTO_PORT) --api-port $(API_PORT)

local: venv
	$(BIN)/python scripts/local.py --moto-port $(MOTO_PORT) --api-port $(API_PORT)

bench: venv
	$(BIN)/python bench/run.py --latency-ms $(LATENCY_MS)

STAGE ?= prod
# The IAM policy files are written for the aws partition; aws-cn / aws-us-gov rewrite them into the
# packaged template (docs/DEPLOY.md).
PARTITION ?= aws

package: venv
	rm -rf build/package
	$(BIN)/python scripts/package.py --build --stage $(STAGE) --partition $(PARTITION) build/package
	@ls -l build/package

# Everything, the records table included, through one CloudFormation stack (kip-$(STAGE)).
# Needs KIP_DEPLOY_BUCKET (the code bucket: `make bootstrap` creates it once per account-region),
# ORG_ID and/or ALLOWED_ACCOUNTS on the first deploy (later deploys keep the previous values), the
# external id in KIP_DEPLOY_EXTERNAL_ID (optional); DRY_RUN=1 only prints the plan.
# docs/DEPLOY.md has the whole sequence.
deploy: package
	$(BIN)/python scripts/deploy.py --stage $(STAGE) $(if $(DRY_RUN),--dry-run) \
		$(if $(ORG_ID),--org-id $(ORG_ID)) $(if $(ALLOWED_ACCOUNTS),--allowed-accounts $(ALLOWED_ACCOUNTS)) \
		$(if $(ALARM_TOPIC_ARN),--alarm-topic-arn $(ALARM_TOPIC_ARN))

bootstrap: venv
	$(BIN)/python scripts/deploy.py --bootstrap --stage $(STAGE)

openapi: venv
	$(BIN)/python -c 'import json; from chalicelib.http.openapi import document; print(json.dumps(document(), indent=2))' > docs/openapi.json

clean:
	rm -rf $(VENV) build .pytest_cache

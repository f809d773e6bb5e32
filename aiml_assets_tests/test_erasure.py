"""The GDPR erasure job's inputs and reach in every environment (the end-to-end run is in test_inference.py)."""

import hashlib

import pytest
from pydantic import ValidationError

from aiml_assets import cli
from aiml_assets.definitions import build_definitions
from aiml_assets.features.assets import FEATURES_KEY
from aiml_assets.governance.erasure import ERASURE_JOB, ErasureRequest
from aiml_assets.inference.assets import SCORING_FEATURES_KEY
from aiml_assets.settings import ENVIRONMENTS


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_environment_can_record_an_erasure_and_its_reads_leave_the_customers_out(env, aiml_home):
    defs = build_definitions(env)
    assert defs.resolve_job_def(ERASURE_JOB)
    graph = defs.resolve_asset_graph()
    readers = [key for key in (FEATURES_KEY, SCORING_FEATURES_KEY) if graph.has(key)]
    assert readers  # every environment computes features from the EDP sources somewhere
    for key in readers:  # read_sources needs the environment's audit log: the erased customers are there
        assert "audit" in defs.get_assets_def(key).required_resource_keys, key


def test_the_job_takes_digests_never_customer_ids():
    digest = hashlib.sha256(b"C00000042").hexdigest()
    assert ErasureRequest(request_id="DSR-2026-0042", customer_digests=[digest, digest]).customer_digests == [digest]
    with pytest.raises(ValidationError, match="not SHA-256 hex digests"):
        ErasureRequest(request_id="DSR-2026-0042", customer_digests=["C00000042"])
    with pytest.raises(ValidationError, match="request_id"):
        ErasureRequest(request_id="please forget me", customer_digests=[digest])


def test_aiml_digest_prints_what_the_job_matches(capsys):
    assert cli.main(["digest", "C00000042", "C00000007", "C00000042"]) == 0
    assert capsys.readouterr().out.split() == sorted(hashlib.sha256(c.encode()).hexdigest()
                                                     for c in ("C00000042", "C00000007"))

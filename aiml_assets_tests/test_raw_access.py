"""Raw bucket reads: sources by catalog name only; a bucket path only under an exception in the register approved by
the CTO and the CDAO and unexpired. Registers are written to temp files; the one allowed read is a real Spark read."""

from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from aiml_assets.resources.audit import AuditLog
from aiml_assets.governance.raw_access import (MAX_TERM, REGISTER, RAW_READ, RAW_READ_REFUSED, RawAccessRefused,
                                               RegisterError, authorise, load_register, read_raw, refusal)
from aiml_assets.resources.catalog import CatalogError, LocalCatalog, UnityCatalog

TODAY = date(2026, 5, 1)
PREFIX = "s3://raw-bucket/customers/"


def entry(**changes) -> dict:
    """An exception in force on TODAY in prod for PREFIX; each test changes one thing."""
    return {"id": "RAW-2026-001", "uri_prefix": PREFIX, "environments": ["prod"], "purpose": "Customers before EDP "
            "onboards them", "requested_by": "j.smith", "change_request": "CHG0012345",
            "approvals": [{"role": "CTO", "name": "Alice Cto", "approved_on": TODAY - timedelta(days=10)},
                          {"role": "CDAO", "name": "Bob Cdao", "approved_on": TODAY - timedelta(days=5)}],
            "expires": TODAY + timedelta(days=60), **changes}


def register(tmp_path, *entries) -> Path:
    path = tmp_path / "raw_bucket_exceptions.yaml"
    path.write_text(yaml.safe_dump({"exceptions": list(entries)}))
    return path


def approvals(cto=("Alice Cto", TODAY), cdao=("Bob Cdao", TODAY)) -> list[dict]:
    """Approvals given as (name, approved_on) per role; None leaves the role out."""
    given = (("CTO", cto), ("CDAO", cdao))
    return [{"role": role, "name": person[0], "approved_on": person[1]} for role, person in given if person]


ALLOWED = {
    "the prefix itself": ({}, PREFIX),
    "a file under it": ({}, PREFIX + "2026/05/part-0.parquet"),
    "on its expiry day": ({"expires": TODAY}, PREFIX + "x"),
    f"expiring {MAX_TERM.days} days after approval": (
        {"approvals": approvals(), "expires": TODAY + MAX_TERM}, PREFIX + "x"),
}

REFUSED = {
    "no CTO approval": ({"approvals": approvals(cto=None)}, PREFIX + "x", "lacks CTO approval"),
    "no CDAO approval": ({"approvals": approvals(cdao=None)}, PREFIX + "x", "lacks CDAO approval"),
    "no approvals": ({"approvals": []}, PREFIX + "x", "lacks CTO approval"),
    "one person as CTO and CDAO": ({"approvals": approvals(cdao=(" alice  CTO", TODAY))}, PREFIX + "x",
                                   "both by Alice Cto; they must be two different people"),
    "expired yesterday": ({"expires": TODAY - timedelta(days=1)}, PREFIX + "x", "expired on 2026-04-30"),
    "a CDAO approval dated tomorrow": ({"approvals": approvals(cdao=("Bob Cdao", TODAY + timedelta(days=1)))},
                                       PREFIX + "x", "CDAO approval is dated 2026-05-02, after today (2026-05-01)"),
    "for another environment": ({"environments": ["lab", "uat"]}, PREFIX + "x", "it is for lab, uat, not prod"),
    f"expiring {MAX_TERM.days + 1} days after approval": (
        {"approvals": approvals(), "expires": TODAY + MAX_TERM + timedelta(days=1)}, PREFIX + "x", "unbounded"),
    "a sibling sharing the prefix's name": ({}, "s3://raw-bucket/customers_secret/x", "no exception in"),
    "the prefix without its slash": ({}, "s3://raw-bucket/customers", "no exception in"),
    "another bucket sharing the name": ({}, "s3://raw-bucket-copy/customers/x", "no exception in"),
    "a '..' segment": ({}, PREFIX + "../other/x", "no '.', '..' or empty segments"),
    "a '.' segment": ({}, PREFIX + "./x", "no '.', '..' or empty segments"),
    "an empty segment": ({}, PREFIX + "/x", "not a plain"),
    "a glob": ({}, PREFIX + "{x,y}", "globs"),
    "a second path after a comma": ({}, PREFIX + "x,s3://other-bucket/y", "commas"),
    "an escaped '..'": ({}, PREFIX + "%2e%2e/other/x", "escapes"),
    "another scheme": ({}, "s3a://raw-bucket/customers/x", "not a plain"),
}


@pytest.mark.parametrize("case", ALLOWED, ids=list(ALLOWED))
def test_an_exception_in_force_allows_what_it_covers(tmp_path, case):
    changes, uri = ALLOWED[case]
    assert authorise(uri, environment="prod", today=TODAY, register=register(tmp_path, entry(**changes))).id == \
        "RAW-2026-001"


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_each_rule_refuses_with_the_uri_and_the_reason(tmp_path, case):
    changes, uri, reason = REFUSED[case]
    with pytest.raises(RawAccessRefused) as refused:
        authorise(uri, environment="prod", today=TODAY, register=register(tmp_path, entry(**changes)))
    assert isinstance(refused.value, PermissionError)
    assert uri in str(refused.value) and reason in str(refused.value), str(refused.value)


def test_no_exception_at_all_refuses_and_points_at_the_catalog(tmp_path):
    with pytest.raises(RawAccessRefused, match="read sources by catalog name"):
        authorise(PREFIX + "x", environment="prod", today=TODAY, register=register(tmp_path))


def test_an_exception_out_of_force_does_not_hide_one_in_force(tmp_path):
    broad = entry(id="RAW-2026-001", uri_prefix="s3://raw-bucket/", expires=TODAY - timedelta(days=1))
    path = register(tmp_path, broad, entry(id="RAW-2026-002"))
    assert authorise(PREFIX + "x", environment="prod", today=TODAY, register=path).id == "RAW-2026-002"
    with pytest.raises(RawAccessRefused, match=r"RAW-2026-001 \(s3://raw-bucket/\): it expired on"):
        authorise("s3://raw-bucket/accounts/x", environment="prod", today=TODAY, register=path)


class NoSpark:
    def __getattr__(self, name):
        raise AssertionError(f"a refused raw read touched Spark ({name})")


def test_an_allowed_read_is_a_real_spark_read_and_is_audited(spark, tmp_path):
    folder = tmp_path / "raw" / "customers"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"customer_id": ["C1", "C2", "C3"], "segment": ["a", "b", "a"]}), folder / "part-0.parquet")
    prefix = f"file://{tmp_path}/raw/customers/"
    path = register(tmp_path, entry(uri_prefix=prefix, environments=["local"]))
    audit = AuditLog(location=str(tmp_path / "audit"))

    frame = read_raw(spark, prefix, environment="local", audit=audit, actor="alice", run_id="run-1", today=TODAY,
                     register=path)
    assert sorted(row.customer_id for row in frame.collect()) == ["C1", "C2", "C3"]
    [event] = audit.read()
    assert (event["action"], event["subject"], event["actor"], event["run_id"], event["change_request"]) == (
        RAW_READ, prefix, "alice", "run-1", "CHG0012345")
    assert event["details"]["exception"] == "RAW-2026-001"

    with pytest.raises(RawAccessRefused, match="it is for local, not prod"):  # the same read, from prod
        read_raw(NoSpark(), prefix, environment="prod", audit=audit, actor="alice", today=TODAY, register=path)
    refused = audit.read()[-1]
    assert refused["action"] == RAW_READ_REFUSED and "it is for local, not prod" in refused["details"]["reason"]


def test_a_refused_read_never_reaches_spark(tmp_path):
    path = register(tmp_path, entry(expires=TODAY - timedelta(days=1)))
    with pytest.raises(RawAccessRefused, match="expired"):
        read_raw(NoSpark(), PREFIX + "x", environment="prod", today=TODAY, register=path)


MALFORMED = {
    "an https prefix": ({"uri_prefix": "https://raw-bucket/customers/"}, "uri_prefix"),
    "a prefix not ending in /": ({"uri_prefix": "s3://raw-bucket/customers"}, "ending in /"),
    "a prefix with '..'": ({"uri_prefix": "s3://raw-bucket/customers/../"}, "uri_prefix"),
    "a file:// prefix outside local": ({"uri_prefix": "file:///tmp/raw/", "environments": ["local", "lab"]},
                                       "file:// prefix is for environments [local] only"),
    "an unknown environment": ({"environments": ["dev"]}, "environments.0"),
    "no environments": ({"environments": []}, "environments"),
    "an empty purpose": ({"purpose": "  "}, "purpose"),
    "a CEO approval": ({"approvals": [{"role": "CEO", "name": "C", "approved_on": TODAY}]}, "approvals.0.role"),
    "an approval that is not a date": ({"approvals": [{"role": "CTO", "name": "A", "approved_on": "soon"}]},
                                       "approvals.0.approved_on"),
    "two CTO approvals": ({"approvals": approvals(cdao=None) * 2}, "approvals: each at most once"),
    "a malformed change request": ({"change_request": "CR-42"}, "change_request"),
    "an extra field": ({"approved": True}, "approved: Extra inputs are not permitted"),
    "no expiry": ({"expires": None}, "expires"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_a_malformed_entry_is_named_with_its_field_and_stops_every_raw_read(tmp_path, case):
    changes, field = MALFORMED[case]
    malformed_entry = entry(**{"id": "RAW-2026-007", "uri_prefix": "s3://raw-bucket/x/", **changes})
    path = register(tmp_path, entry(id="RAW-2026-002"), malformed_entry)
    with pytest.raises(RegisterError) as malformed:
        load_register(path)
    assert "exception RAW-2026-007 is invalid" in str(malformed.value) and field in str(malformed.value)
    with pytest.raises(RegisterError):  # the valid entry allows nothing while the register is malformed
        authorise(PREFIX + "x", environment="prod", today=TODAY, register=path)


def test_a_malformed_register_is_refused(tmp_path):
    path = tmp_path / "register.yaml"
    for text, message in (("exceptions: [\n", "cannot read"), ("{}\n", "expected one key, exceptions"),
                          ("exceptions: []\nnotes: x\n", "expected one key, exceptions")):
        path.write_text(text)
        with pytest.raises(RegisterError, match=message):
            load_register(path)
    with pytest.raises(RegisterError, match="exception RAW-2026-001 is listed twice"):
        load_register(register(tmp_path, entry(), entry(uri_prefix="s3://raw-bucket/other/")))
    with pytest.raises(RegisterError, match="cannot read"):
        load_register(tmp_path / "missing.yaml")


def test_the_committed_register_holds_only_exceptions_in_force():
    # Deliberately dated: an exception that expires fails this until someone removes it from the register.
    today = datetime.now(ZoneInfo("Europe/London")).date()
    for exception in load_register(REGISTER):
        for environment in exception.environments:
            reason = refusal(exception, environment, today)
            assert reason is None, f"{exception.id} in {environment}: {reason}"


@pytest.mark.parametrize("path", ["s3://raw-bucket/customers/", "s3://raw-bucket/customers/part-0.parquet",
                                  "file:///tmp/raw/customers", "/tmp/raw/customers", "delta.`s3://raw-bucket/x`",
                                  "edp.customers"])
def test_the_catalog_reads_names_not_paths(spark, tmp_path, path):
    for catalog in (LocalCatalog(home=str(tmp_path)), UnityCatalog()):
        with pytest.raises(CatalogError, match="is not a three-level catalog name"):
            catalog.read(spark, path)

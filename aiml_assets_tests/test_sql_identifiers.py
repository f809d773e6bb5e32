"""The rules for values in SQL text: what they accept, what they refuse, and the quoting they give."""

import pytest

from aiml_assets.settings import ENVIRONMENTS, load_settings
from aiml_assets.sql_identifiers import (
    UnsafeSqlValue, delta_path, location_literal, partition_literal, quoted_name, quoted_principal, string_literal,
)


def test_legitimate_values_are_quoted_and_otherwise_unchanged():
    assert quoted_name("edp.cdp.nba_propensity") == "`edp`.`cdp`.`nba_propensity`"
    assert quoted_principal("aiml-data-product-owners") == "`aiml-data-product-owners`"
    assert quoted_principal("svc.aiml@buk.example") == "`svc.aiml@buk.example`"
    assert location_literal("s3://buk-aiml-prod/cdp/nba_propensity/versions/0123") == \
        "'s3://buk-aiml-prod/cdp/nba_propensity/versions/0123'"
    assert delta_path("s3://buk-aiml-lab/customer_features") == "delta.`s3://buk-aiml-lab/customer_features`"
    assert partition_literal("2024-11-01", "snapshot_date") == "'2024-11-01'"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_environment_files_principals_pass(env):
    settings = load_settings(env)
    principals = [settings.catalog.table_owner]
    if settings.publication:
        principals += [settings.publication.owner, *settings.publication.tenant_groups]
    assert all(quoted_principal(p) == f"`{p}`" for p in principals)


@pytest.mark.parametrize(("quote", "value", "refusal"), [
    (quoted_name, "edp.cdp`.x", r"^part of 'edp.cdp`.x': 'cdp`' is not a plain SQL identifier: expected lower-case"),
    (quoted_name, "edp.Cdp.x", r"is not a plain SQL identifier"),
    (quoted_principal, "owners` TO `account users", r"^principal: .* is not a catalog principal"),
    (quoted_principal, "", r"^principal: '' is not a catalog principal"),
    (quoted_principal, "-owners", r"is not a catalog principal"),
    (location_literal, "s3://b/k' OR '1", r"^location: .* is not an S3 location"),
    (location_literal, "s3://b/k\\", r"is not an S3 location"),
    (location_literal, "s3://b/./k", r"is not an S3 location"),
    (location_literal, "s3://b/k%27", r"is not an S3 location"),
    (delta_path, "s3://b/k`", r"is not an S3 location"),
    (delta_path, "/dbfs/k", r"is not an S3 location"),
])
def test_values_that_need_escaping_are_refused_naming_the_rule(quote, value, refusal):
    with pytest.raises(UnsafeSqlValue, match=refusal):
        quote(value)


def test_partition_values_that_need_escaping_are_refused_naming_the_column():
    for value in ["2024-11-01'", "2024 11 01", "a\\", "", "x" * 65]:
        with pytest.raises(UnsafeSqlValue, match=r"^partition snapshot_date: .* is not a plain partition value"):
            partition_literal(value, "snapshot_date")


def test_free_text_is_escaped_with_backslashes():
    assert string_literal("plain") == "'plain'"
    assert string_literal("O'Brien") == "'O\\'Brien'"
    assert string_literal("ends with \\") == "'ends with \\\\'"  # the backslash cannot escape the closing quote
    assert string_literal("\\' OR 1=1 --") == "'\\\\\\' OR 1=1 --'"

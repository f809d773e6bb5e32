"""What may go into SQL built as text (Databricks SQL), and how it is quoted there.

Names, principals, locations and partition values must match a strict pattern, both where they enter (the settings
validators, the Delta log reader) and where a statement is built: a value that would need escaping never reaches
SQL. Identifiers and principals are then backtick-quoted anyway, so that keywords and hyphens (`aiml-engineers`)
read as names. Free text (comments, properties) is the one thing escaped rather than refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class UnsafeSqlValue(ValueError):
    """A value refused for SQL text: it does not match the rule for its place in a statement."""


@dataclass(frozen=True)
class Rule:
    what: str  # "a catalog principal"
    pattern: re.Pattern
    described: str  # the pattern in words, for the refusal

    def check(self, value, field: str | None = None) -> str:
        """`value` if it matches; else refused, naming `field` (settings leave it out: pydantic names the field)."""
        if isinstance(value, str) and self.pattern.fullmatch(value):
            return value
        refusal = f"not {self.what}: expected {self.described}"
        raise UnsafeSqlValue(f"{field}: {value!r} is {refusal}" if field else refusal)


IDENTIFIER = Rule("a plain SQL identifier", re.compile(r"[a-z_][a-z0-9_]{0,254}"),
                  "lower-case letters, digits and _, not starting with a digit")
PRINCIPAL = Rule("a catalog principal", re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,254}"),
                 "letters, digits and . _ @ + -, starting with a letter or digit (no quotes, backticks or spaces)")
# A bucket then key segments that cannot be '.' or '..'; no quotes, backticks, spaces or '%'
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]*"
S3_LOCATION = Rule("an S3 location", re.compile(rf"s3://[a-z0-9][a-z0-9.-]{{0,62}}(/{_SEGMENT})*/?"),
                   "s3://<bucket>[/<key>] with a bucket of lower-case letters, digits, . and -, and key segments of "
                   "letters, digits and . _ - (no quotes, backticks, spaces or '..')")
LOCAL_FOLDER = Rule("a folder under the AIML home", re.compile(rf"{_SEGMENT}(/{_SEGMENT})*"),
                    "a relative path of letters, digits and . _ - (no quotes, backticks, spaces or '..')")
# What tables accept as a partition value in a predicate whatever the column's type: nothing that needs escaping
PARTITION_VALUE = Rule("a plain partition value", re.compile(r"[A-Za-z0-9_.:+-]{1,64}"),
                       "1 to 64 letters, digits and . _ : + -")
ISO_DATE = Rule("an ISO date", re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"), "YYYY-MM-DD")


def quoted_identifier(name: str, field: str = "identifier") -> str:
    return f"`{IDENTIFIER.check(name, field)}`"


def quoted_name(name: str) -> str:
    """A dotted name (catalog.schema.table), each part checked and quoted."""
    return ".".join(quoted_identifier(part, f"part of {name!r}") for part in name.split("."))


def quoted_principal(principal: str, field: str = "principal") -> str:
    return f"`{PRINCIPAL.check(principal, field)}`"


def location_literal(location: str, field: str = "location") -> str:
    return f"'{S3_LOCATION.check(location, field)}'"


def delta_path(location: str) -> str:
    """The table at `location` addressed by path (delta.`s3://...`)."""
    return f"delta.`{S3_LOCATION.check(location, 'location')}`"


def partition_literal(value: str, column: str) -> str:
    return f"'{PARTITION_VALUE.check(value, f'partition {column}')}'"


def string_literal(text) -> str:
    """Free text as a string literal. Databricks SQL escapes with a backslash: a doubled quote reads as two adjacent
    literals, and leaves a backslash before it free to end the literal early."""
    return "'" + str(text).replace("\\", "\\\\").replace("'", "\\'") + "'"

"""pandera models of the EDP source products: what we rely on in each product EDP publishes.

Their date ranges, the customers' age range and whether an unexpected column fails come from the env file, so the
models are built from the settings (`source_models`); SOURCE_MODELS are this environment's."""

from __future__ import annotations

from datetime import datetime, time

import pandera.pyspark as pa
import pyspark.sql.types as T
from dagster import AssetKey
from pandera.pyspark import Field

from aiml_assets.model_inputs import SPEND_CATEGORIES
from aiml_assets.settings import Settings, load_settings

PRODUCT_CODES = load_settings().products
CATEGORIES = list(SPEND_CATEGORIES)
TRANSACTION_CHANNELS = ["contactless", "chip_and_pin", "online", "mobile_app", "direct_debit"]
CONTACT_CHANNELS = ["email", "sms", "app_push", "direct_mail", "outbound_call"]
SEGMENTS = ["mass", "affluent", "premier", "small_business", "student"]
INCOME_BANDS = ["under_20k", "20k_40k", "40k_70k", "70k_100k", "100k_plus"]
REGIONS = ["London", "South East", "North West", "East of England", "West Midlands", "South West",
           "Yorkshire and The Humber", "Scotland", "East Midlands", "Wales", "North East", "Northern Ireland"]
CUSTOMERS, TRANSACTIONS = "edp.fdp.customers", "edp.fdp.transactions"
HOLDINGS, RESPONSES = "edp.cdp.product_holdings", "edp.bdp.campaign_responses"
NOT_FUTURE = {"not_future": True}


def asset_key(table_name: str) -> AssetKey:
    """`edp.fdp.customers` -> `edp/fdp/customers`: the asset graph uses the catalog's own names."""
    return AssetKey(table_name.split("."))


def source_models(settings: Settings) -> dict[str, type[pa.DataFrameModel]]:
    """The models, with the ranges and the strictness the env file's `sources:` sets (resources/<env>.yaml)."""
    rules, products = settings.sources, settings.products
    earliest_ts = datetime.combine(rules.earliest_date, time.min)

    def event_date(description: str, *, nullable: bool = False):
        """A day something happened: not before the bank's data begins, not in the future."""
        return Field(ge=rules.earliest_date, nullable=nullable, metadata=NOT_FUTURE, description=description)

    def fails_on_extra_columns(name: str) -> bool:
        return rules.extra_columns.get(name, "warn") == "fail"

    class Customers(pa.DataFrameModel):
        customer_id: T.StringType() = Field(str_matches=r"C[0-9]{8}", description="Customer key; unique")
        birth_date: T.DateType() = Field(
            metadata={"min_age_at": ("joined_date", rules.min_age_years), "max_age": rules.max_age_years},
            description="Date of birth")
        region: T.StringType() = Field(isin=REGIONS, description="UK region of the customer's address (ITL1)")
        segment: T.StringType() = Field(isin=SEGMENTS, description="Customer segment")
        income_band: T.StringType() = Field(isin=INCOME_BANDS, description="Declared annual income band, GBP")
        # Not bounded by earliest_date: customers of long standing joined before the bank's event data begins;
        # the age rules bound it instead: at least min_age_years after a birth at most max_age_years ago.
        joined_date: T.DateType() = Field(metadata=NOT_FUTURE, description="Customer since; no event precedes it")

        class Config:
            unique = ["customer_id"]
            strict = fails_on_extra_columns(CUSTOMERS)

    class Transactions(pa.DataFrameModel):
        transaction_id: T.LongType() = Field(description="Transaction key; unique")
        customer_id: T.StringType() = Field(str_matches=r"C[0-9]{8}", description="Customer (edp.fdp.customers)")
        transaction_ts: T.TimestampType() = Field(ge=earliest_ts, metadata=NOT_FUTURE,
                                                  description="When it happened, UTC")
        # Finite (quality.FINITE) as well as positive: no infinite amount reaches the features (a sum that
        # overflows still can: the features' own finite rule catches it, see features/schemas.py).
        amount: T.DoubleType() = Field(gt=0, description="Amount in GBP, positive")
        category: T.StringType() = Field(isin=CATEGORIES, description="Spend category")
        channel: T.StringType() = Field(isin=TRANSACTION_CHANNELS, description="Payment channel")

        class Config:
            unique = ["transaction_id"]
            strict = fails_on_extra_columns(TRANSACTIONS)

    class ProductHoldings(pa.DataFrameModel):
        holding_id: T.StringType() = Field(description="Holding key; unique")
        customer_id: T.StringType() = Field(str_matches=r"C[0-9]{8}", description="Customer (edp.fdp.customers)")
        product_code: T.StringType() = Field(isin=products, description="Product held")
        opened_date: T.DateType() = event_date("Date opened")
        closed_date: T.DateType() = event_date("Date closed; null while open", nullable=True)

        class Config:
            unique = ["holding_id"]
            strict = fails_on_extra_columns(HOLDINGS)

    class CampaignResponses(pa.DataFrameModel):
        response_id: T.StringType() = Field(description="Contact key; unique")
        campaign_id: T.StringType() = Field(description="Campaign")
        customer_id: T.StringType() = Field(str_matches=r"C[0-9]{8}", description="Customer contacted")
        product_code: T.StringType() = Field(isin=products, description="Product the campaign offered")
        contact_date: T.DateType() = event_date("Date of contact")
        channel: T.StringType() = Field(isin=CONTACT_CHANNELS, description="Contact channel")
        responded: T.BooleanType() = Field(description="Whether the customer responded (by end of data)")
        response_date: T.DateType() = event_date("Date of response, or null", nullable=True)

        class Config:
            unique = ["response_id"]
            strict = fails_on_extra_columns(RESPONSES)

    return {CUSTOMERS: Customers, TRANSACTIONS: Transactions, HOLDINGS: ProductHoldings, RESPONSES: CampaignResponses}


SOURCE_MODELS = source_models(load_settings())

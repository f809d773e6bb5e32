"""pandera models of the EDP source products: what we rely on in each product EDP publishes."""

from __future__ import annotations

import pandera.pyspark as pa
import pyspark.sql.types as T
from pandera.pyspark import Field

from aiml_assets.settings import load_settings

PRODUCT_CODES = load_settings().products
CATEGORIES = ["groceries", "dining", "travel", "fuel", "utilities", "entertainment", "retail", "other"]
TRANSACTION_CHANNELS = ["contactless", "chip_and_pin", "online", "mobile_app", "direct_debit"]
CONTACT_CHANNELS = ["email", "sms", "app_push", "direct_mail", "outbound_call"]
SEGMENTS = ["mass", "affluent", "premier", "small_business", "student"]
INCOME_BANDS = ["under_20k", "20k_40k", "40k_70k", "70k_100k", "100k_plus"]
REGIONS = ["London", "South East", "North West", "East of England", "West Midlands", "South West",
           "Yorkshire and The Humber", "Scotland", "East Midlands", "Wales", "North East", "Northern Ireland"]
NOT_FUTURE = {"not_future": True}


class Customers(pa.DataFrameModel):
    customer_id: T.StringType() = Field(str_matches=r"C[0-9]{8}", description="Customer key; unique")
    birth_date: T.DateType() = Field(description="Date of birth")
    region: T.StringType() = Field(isin=REGIONS, description="UK region of the customer's address (ITL1)")
    segment: T.StringType() = Field(isin=SEGMENTS, description="Customer segment")
    income_band: T.StringType() = Field(isin=INCOME_BANDS, description="Declared annual income band, GBP")
    joined_date: T.DateType() = Field(metadata=NOT_FUTURE, description="Customer since; no event precedes it")

    class Config:
        unique = ["customer_id"]


class Transactions(pa.DataFrameModel):
    transaction_id: T.LongType() = Field(description="Transaction key; unique")
    customer_id: T.StringType() = Field(str_matches=r"C[0-9]{8}", description="Customer (edp.fdp.customers)")
    transaction_ts: T.TimestampType() = Field(metadata=NOT_FUTURE, description="When it happened, UTC")
    amount: T.DoubleType() = Field(gt=0, description="Amount in GBP, positive")
    category: T.StringType() = Field(isin=CATEGORIES, description="Spend category")
    channel: T.StringType() = Field(isin=TRANSACTION_CHANNELS, description="Payment channel")

    class Config:
        unique = ["transaction_id"]


class ProductHoldings(pa.DataFrameModel):
    holding_id: T.StringType() = Field(description="Holding key; unique")
    customer_id: T.StringType() = Field(str_matches=r"C[0-9]{8}", description="Customer (edp.fdp.customers)")
    product_code: T.StringType() = Field(isin=PRODUCT_CODES, description="Product held")
    opened_date: T.DateType() = Field(metadata=NOT_FUTURE, description="Date opened")
    closed_date: T.DateType() = Field(nullable=True, metadata=NOT_FUTURE, description="Date closed; null while open")

    class Config:
        unique = ["holding_id"]


class CampaignResponses(pa.DataFrameModel):
    response_id: T.StringType() = Field(description="Contact key; unique")
    campaign_id: T.StringType() = Field(description="Campaign")
    customer_id: T.StringType() = Field(str_matches=r"C[0-9]{8}", description="Customer contacted")
    product_code: T.StringType() = Field(isin=PRODUCT_CODES, description="Product the campaign offered")
    contact_date: T.DateType() = Field(metadata=NOT_FUTURE, description="Date of contact")
    channel: T.StringType() = Field(isin=CONTACT_CHANNELS, description="Contact channel")
    responded: T.BooleanType() = Field(description="Whether the customer responded (by end of data)")
    response_date: T.DateType() = Field(nullable=True, metadata=NOT_FUTURE, description="Date of response, or null")

    class Config:
        unique = ["response_id"]


SOURCE_MODELS: dict[str, type[pa.DataFrameModel]] = {
    "edp.fdp.customers": Customers,
    "edp.fdp.transactions": Transactions,
    "edp.cdp.product_holdings": ProductHoldings,
    "edp.bdp.campaign_responses": CampaignResponses,
}

"""The local EDP: synthetic, internally consistent stand-ins for the four EDP source data products.

`seed_edp` writes them as Delta tables into the local catalog (owner EDP), so features -> propensity models ->
scoring can run locally on realistic data. Nothing here is real: names, ids and dates are generated.

How the data hangs together
---------------------------
Each customer has latent traits: affluence, digital engagement, spend intensity, a spend mix over the eight
categories and a per-product affinity. Observable attributes follow from them (age band and life stage, region,
segment, income band, tenure). The simulation then runs month by month over the history window:

1. Behaviour: each month's card and direct-debit transactions are Poisson counts per category whose rate is the
   customer's intensity x mix x seasonality (December peak, summer travel, January lull) x effects of the products
   they hold (a new mortgage brings furnishing spend, a credit card some extra discretionary spend). Days follow
   weekday profiles (weekend dining and retail, weekday direct debits early in the month), hours follow
   category profiles, amounts are log-normal by category and affluence.
2. Take-up: for every product the customer does not hold, a monthly hazard of opening it is a log-linear function
   of what a model can observe as of the month start: age (a life-stage curve per product), segment, tenure
   (onboarding cross-sell), spend level and mix over the previous three months, dormancy, holdings of other
   products (and a mortgage opened in the last 90 days), recent campaign contact, calendar month (ISA season).
3. Campaigns: per product and month a campaign may run; it contacts eligible customers preferentially by a noisy
   version of that hazard, responses are more likely the higher the hazard, and most responders open the
   product within days of responding, so campaign-driven holdings cluster shortly after the response.
4. Holdings close after a product-specific lifetime (loans at the end of their term or earlier), after which
   the product can be opened again.

Every foreign key resolves, nothing happens before the customer joined or after `end_date`.

Determinism and memory
----------------------
Customers are generated in chunks of the FIXED size `CHUNK_CUSTOMERS`; chunk i uses
`np.random.default_rng([seed, 1, i])` (the campaign calendar `[seed, 2]`), so a seed gives byte-identical data
whatever the machine's memory, and memory is bounded by the chunk size. Transactions stream as Arrow record
batches straight into one delta-rs commit; the three small tables are spilled chunk by chunk to Arrow IPC files
beside the catalog and committed from there, one commit per table. Re-seeding overwrites (a new table version).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake
from deltalake.transaction import CommitProperties

from aiml_assets.model_inputs import SPEND_CATEGORIES
from aiml_assets.resources.catalog import LocalCatalog

GENERATOR = "aiml_assets.edp.seed"
GENERATOR_VERSION = "1"
EDP_OWNER = "EDP"

# FIXED: the data for a seed must not depend on the machine, so never derive this from the total or from memory.
CHUNK_CUSTOMERS = 25_000
# Largest record batch handed to delta-rs (transactions of one chunk are sliced into batches of at most this).
BATCH_ROWS = 262_144
# transaction_id = customer number * TX_ID_STRIDE + the transaction's sequence number within the customer.
TX_ID_STRIDE = 100_000

CUSTOMERS = "edp.fdp.customers"
TRANSACTIONS = "edp.fdp.transactions"
HOLDINGS = "edp.cdp.product_holdings"
RESPONSES = "edp.bdp.campaign_responses"


# --------------------------------------------------------------------------------------------------------------
# The products' contracts: one schema per table, defined once. Asset specs and TableSchema metadata are built
# from this dict (aiml_assets.sources.edp).
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Product:
    """One EDP data product: its Arrow schema, EDP layer (fdp/cdp/bdp), a one-line description, column docs."""

    schema: pa.Schema
    layer: str
    description: str
    column_descriptions: dict[str, str] = field(default_factory=dict)


def _schema(*columns: tuple[str, pa.DataType, bool, str]) -> tuple[pa.Schema, dict[str, str]]:
    schema = pa.schema([pa.field(name, dtype, nullable=nullable) for name, dtype, nullable, _ in columns])
    return schema, {name: doc for name, _, _, doc in columns}


_UTC_MICROS = pa.timestamp("us", tz="UTC")

_customers_schema, _customers_docs = _schema(
    ("customer_id", pa.string(), False, "Customer key, 'C' and 8 digits; synthetic, unique"),
    ("birth_date", pa.date32(), False, "Date of birth (synthetic); customers are 18+ when they join"),
    ("region", pa.string(), False, "UK region of the customer's address (ITL1)"),
    ("segment", pa.string(), False, "Customer segment: mass, affluent, premier, small_business, student"),
    ("income_band", pa.string(), False, "Declared annual income band in GBP: under_20k ... 100k_plus"),
    ("joined_date", pa.date32(), False, "Date the customer relationship started; no event precedes it"),
)
_transactions_schema, _transactions_docs = _schema(
    ("transaction_id", pa.int64(), False, "Transaction key: customer number * 100000 + sequence; unique"),
    ("customer_id", pa.string(), False, "Customer who made the transaction (edp.fdp.customers)"),
    ("transaction_ts", _UTC_MICROS, False, "When the transaction happened, UTC, microseconds"),
    ("amount", pa.float64(), False, "Amount in GBP, positive, to the penny"),
    ("category", pa.string(), False,
     "Spend category: groceries, dining, travel, fuel, utilities, entertainment, retail, other"),
    ("channel", pa.string(), False, "Payment channel: contactless, chip_and_pin, online, mobile_app, direct_debit"),
)
_holdings_schema, _holdings_docs = _schema(
    ("holding_id", pa.string(), False, "Holding key, 'H', customer number and sequence; unique"),
    ("customer_id", pa.string(), False, "Customer holding the product (edp.fdp.customers)"),
    ("product_code", pa.string(), False, "Product held, one of the platform's product codes"),
    ("opened_date", pa.date32(), False, "Date the product was opened; on or after the customer's joined_date"),
    ("closed_date", pa.date32(), True, "Date the product was closed, after opened_date; null while open"),
)
_responses_schema, _responses_docs = _schema(
    ("response_id", pa.string(), False, "Contact key, 'R', customer number and sequence; unique"),
    ("campaign_id", pa.string(), False, "Campaign, 'CMP-<yyyymm>-<product_code>'"),
    ("customer_id", pa.string(), False, "Customer contacted (edp.fdp.customers)"),
    ("product_code", pa.string(), False, "Product the campaign offered"),
    ("contact_date", pa.date32(), False, "Date the customer was contacted"),
    ("channel", pa.string(), False, "Contact channel: email, sms, app_push, direct_mail, outbound_call"),
    ("responded", pa.bool_(), False, "Whether the customer responded (by end of data)"),
    ("response_date", pa.date32(), True, "Date of the response, on or after contact_date; null if none"),
)

EDP_PRODUCTS: dict[str, Product] = {
    CUSTOMERS: Product(_customers_schema, "fdp",
                       "Customer master: one row per retail customer with demographics, segment and tenure",
                       _customers_docs),
    TRANSACTIONS: Product(_transactions_schema, "fdp",
                          "Card and direct-debit transactions of the customers' current accounts",
                          _transactions_docs),
    HOLDINGS: Product(_holdings_schema, "cdp",
                      "Customers' product holdings (cards, loans, mortgages, savings, insurance, ISAs), open and closed",
                      _holdings_docs),
    RESPONSES: Product(_responses_schema, "bdp",
                       "Marketing campaign contacts per customer and product, with the customer's response",
                       _responses_docs),
}

# --------------------------------------------------------------------------------------------------------------
# The synthetic world's constants
# --------------------------------------------------------------------------------------------------------------

CATEGORIES = SPEND_CATEGORIES  # EDP's transaction categories, as our features read them
_K = {name: i for i, name in enumerate(CATEGORIES)}
TX_CHANNELS = ("contactless", "chip_and_pin", "online", "mobile_app", "direct_debit")
CAMPAIGN_CHANNELS = ("email", "sms", "app_push", "direct_mail", "outbound_call")
SEGMENTS = ("mass", "affluent", "premier", "small_business", "student")
INCOME_BANDS = ("under_20k", "20k_40k", "40k_70k", "70k_100k", "100k_plus")
# ITL1 regions, population share, affluence shift
REGIONS = (
    ("London", 13.4, 0.35), ("South East", 13.8, 0.20), ("North West", 11.0, -0.05), ("East of England", 9.4, 0.10),
    ("West Midlands", 8.9, -0.05), ("South West", 8.5, 0.05), ("Yorkshire and The Humber", 8.2, -0.10),
    ("Scotland", 8.1, 0.0), ("East Midlands", 7.3, -0.05), ("Wales", 4.7, -0.15), ("North East", 4.0, -0.20),
    ("Northern Ireland", 2.8, -0.10),
)
# age at end of data: (from, to, share of customers)
AGE_BANDS = ((18, 25, 0.11), (25, 35, 0.18), (35, 45, 0.17), (45, 55, 0.17), (55, 65, 0.15), (65, 75, 0.12),
             (75, 91, 0.10))

# Spend: share of transactions per category, median amount (GBP) and log-normal spread
_BASE_SHARE = np.array([0.28, 0.14, 0.04, 0.09, 0.10, 0.07, 0.18, 0.10])
_AMOUNT_MEDIAN = np.array([32.0, 24.0, 160.0, 55.0, 70.0, 28.0, 42.0, 35.0])
_AMOUNT_SIGMA = np.array([0.70, 0.60, 0.90, 0.35, 0.50, 0.70, 0.90, 1.00])
_RATE_SCALE = 1.08  # calibrates the mean to about 50 transactions per customer over three years
_RATE_CAP = 60.0  # transactions per customer and month

# Count seasonality per calendar month (rows 1..12) and category
_SEASON = np.ones((13, len(CATEGORIES)))
for _month, _effects in {
    1: {"groceries": 0.95, "dining": 0.80, "travel": 0.60, "entertainment": 0.85, "retail": 1.10},
    2: {"dining": 0.95, "travel": 0.85, "retail": 0.85},
    3: {"travel": 0.95},
    4: {"travel": 1.15, "entertainment": 1.05},
    5: {"travel": 1.05, "dining": 1.05},
    6: {"travel": 1.30, "dining": 1.10, "entertainment": 1.10, "fuel": 1.05},
    7: {"travel": 1.80, "dining": 1.10, "entertainment": 1.10, "fuel": 1.15},
    8: {"travel": 1.90, "dining": 1.10, "entertainment": 1.10, "fuel": 1.15},
    9: {"travel": 1.00},
    10: {"retail": 1.00},
    11: {"retail": 1.35, "entertainment": 1.05},
    12: {"groceries": 1.20, "dining": 1.35, "travel": 1.20, "entertainment": 1.30, "retail": 1.70, "other": 1.10},
}.items():
    for _cat, _factor in _effects.items():
        _SEASON[_month, _K[_cat]] = _factor
# Amount seasonality: winter energy bills, Christmas baskets, peak-season travel prices
_SEASON_AMOUNT = np.ones((13, len(CATEGORIES)))
for _month in (12, 1, 2):
    _SEASON_AMOUNT[_month, _K["utilities"]] = 1.30
for _month in (6, 7, 8):
    _SEASON_AMOUNT[_month, _K["utilities"]] = 0.85
_SEASON_AMOUNT[12, _K["retail"]] = 1.25
_SEASON_AMOUNT[12, _K["groceries"]] = 1.15
_SEASON_AMOUNT[7, _K["travel"]] = _SEASON_AMOUNT[8, _K["travel"]] = 1.20

# Weekday profile (Mon..Sun) per category
_WEEKDAY = np.array([
    [0.90, 0.90, 0.90, 1.00, 1.15, 1.40, 1.00],  # groceries
    [0.70, 0.80, 0.90, 1.00, 1.45, 1.50, 1.10],  # dining
    [1.00, 0.90, 0.90, 1.00, 1.30, 1.10, 1.00],  # travel
    [1.00, 1.00, 1.00, 1.00, 1.10, 1.10, 0.85],  # fuel
    [1.30, 1.20, 1.20, 1.20, 1.20, 0.30, 0.25],  # utilities
    [0.60, 0.70, 0.80, 0.90, 1.40, 1.70, 1.30],  # entertainment
    [0.80, 0.80, 0.80, 0.90, 1.10, 1.60, 1.20],  # retail
    [1.00, 1.00, 1.00, 1.00, 1.00, 0.90, 0.80],  # other
])


def _hours(*peaks: tuple[float, float, float], floor: float = 0.02) -> np.ndarray:
    h = np.arange(24) + 0.5
    w = np.full(24, floor)
    for centre, width, weight in peaks:
        w += weight * np.exp(-0.5 * ((h - centre) / width) ** 2)
    return w / w.sum()


_HOUR = np.stack([
    _hours((11, 2.5, 0.6), (17.5, 1.8, 1.0)),  # groceries
    _hours((12.8, 1.0, 0.9), (19.5, 1.6, 1.0)),  # dining
    _hours((9, 3, 0.7), (20, 2.5, 0.6), floor=0.05),  # travel
    _hours((8, 1.5, 0.8), (17, 2.0, 1.0)),  # fuel
    _hours((3, 1.5, 1.0), floor=0.01),  # utilities: overnight direct-debit runs
    _hours((20.5, 2.0, 1.0), (15, 2.5, 0.3)),  # entertainment
    _hours((13, 3.0, 1.0), (20.5, 1.5, 0.4)),  # retail
    _hours((13, 4.5, 1.0)),  # other
])
_HOUR_CDF = np.cumsum(_HOUR, axis=1)
_HOUR_CDF[:, -1] = 1.0
# log-odds of paying remotely (online or in the app) per category, before the customer's digital engagement
_REMOTE_LOGIT = np.array([-2.2, -2.4, 0.8, -4.0, 0.0, -0.4, -0.6, -1.0])


@dataclass(frozen=True)
class Propensity:
    """How a product's monthly take-up hazard depends on what can be observed as of the month start.

    log hazard = log(base) + age_gain * exp(-((age - age_peak) / age_width)^2) + old (age >= 70) + young (< 25)
                 + segment[segment] + affluence * a + digital * d + spend * z(spend, 3 months)
                 + sum(mix[c] * spend share of c, 3 months) + onboarding (tenure < 3 months) + tenure * years/10
                 + sum(holds[q] * holds q) + sum(recent[q] * opened q in the last 90 days)
                 + season[calendar month] + affinity (latent) + dormancy + recent campaign contact
    """

    base: float
    age_peak: float
    age_width: float
    age_gain: float
    old: float = 0.0
    young: float = 0.0
    segment: dict[str, float] = field(default_factory=dict)
    affluence: float = 0.0
    digital: float = 0.0
    spend: float = 0.0
    mix: dict[str, float] = field(default_factory=dict)
    onboarding: float = 0.0
    tenure: float = 0.0
    holds: dict[str, float] = field(default_factory=dict)
    recent: dict[str, float] = field(default_factory=dict)
    season: dict[int, float] = field(default_factory=dict)
    lifetime_months: float = 96.0  # mean time until closure
    term_months: tuple[int, ...] = ()  # loans: closed at the end of one of these terms at the latest
    initial: float = 1.0  # scales the integrated hazard before the window into the share holding it at the start
    spend_effect: dict[str, float] = field(default_factory=dict)  # spend multipliers while held
    new_spend_effect: dict[str, float] = field(default_factory=dict)  # ... in the 90 days after opening


PROPENSITIES: dict[str, Propensity] = {
    "credit_card": Propensity(
        base=0.0045, age_peak=30, age_width=13, age_gain=1.0, old=-0.9, young=0.1,
        segment={"student": 0.2, "affluent": 0.3, "premier": 0.1, "small_business": -0.3},
        affluence=0.15, digital=0.25, spend=0.45, mix={"travel": 1.5, "dining": 1.2, "entertainment": 0.8},
        onboarding=1.4, tenure=-0.2, holds={"personal_loan": -0.4}, season={11: 0.25, 12: 0.15, 1: -0.15},
        lifetime_months=110, initial=1.0,
        spend_effect={"dining": 1.15, "travel": 1.2, "entertainment": 1.1, "retail": 1.1},
    ),
    "personal_loan": Propensity(
        base=0.0026, age_peak=35, age_width=12, age_gain=0.9, old=-1.3, young=-0.3,
        segment={"student": -1.2, "affluent": -0.3, "premier": -1.0, "small_business": 0.5},
        affluence=-0.25, digital=0.1, spend=0.40, mix={"retail": 1.8, "travel": 0.8, "fuel": 0.6},
        tenure=0.1, holds={"credit_card": 0.35, "mortgage": -0.3}, season={1: 0.3, 3: 0.25, 9: 0.25, 12: -0.3},
        lifetime_months=36, term_months=(12, 24, 36, 48, 60), initial=1.1,
        new_spend_effect={"retail": 1.4, "travel": 1.3},
    ),
    "mortgage": Propensity(
        base=0.0016, age_peak=33, age_width=9, age_gain=1.9, old=-1.5, young=-0.8,
        segment={"student": -2.0, "affluent": 0.5, "premier": 0.6, "small_business": 0.1},
        affluence=0.45, spend=0.25, mix={"dining": -0.8, "entertainment": -0.8, "utilities": 0.6},
        onboarding=-0.5, tenure=0.25, holds={"savings_account": 0.5},
        season={3: 0.15, 4: 0.2, 5: 0.2, 6: 0.2, 12: -0.4, 1: -0.2},
        lifetime_months=170, initial=0.8,
        spend_effect={"utilities": 1.1}, new_spend_effect={"retail": 1.8, "utilities": 1.3},
    ),
    "savings_account": Propensity(
        base=0.0045, age_peak=64, age_width=16, age_gain=0.8, young=0.3,
        segment={"student": 0.3, "affluent": 0.45, "premier": 0.3, "small_business": 0.1},
        affluence=0.35, digital=0.3, spend=0.35, mix={"groceries": 0.6},
        onboarding=1.6, holds={"investment_isa": 0.3, "personal_loan": -0.4}, season={1: 0.35, 4: 0.2},
        lifetime_months=80, initial=1.0,
    ),
    "home_insurance": Propensity(
        base=0.0016, age_peak=45, age_width=18, age_gain=0.6, old=-0.3, young=-0.8,
        segment={"student": -1.8, "affluent": 0.3, "premier": 0.4},
        affluence=0.2, digital=0.1, spend=0.2, mix={"utilities": 1.2, "retail": 0.5},
        holds={"mortgage": 1.4}, recent={"mortgage": 2.8}, season={9: 0.1},
        lifetime_months=60, initial=1.3,
    ),
    "investment_isa": Propensity(
        base=0.0012, age_peak=58, age_width=16, age_gain=0.9, old=-0.2, young=-1.0,
        segment={"student": -1.8, "affluent": 0.9, "premier": 1.5, "small_business": 0.3},
        affluence=0.5, digital=0.2, spend=0.25, mix={"travel": 0.6, "dining": 0.3},
        tenure=0.3, holds={"savings_account": 0.7}, season={2: 0.3, 3: 0.9, 4: 0.7},
        lifetime_months=130, initial=1.0,
    ),
}
# Holdings before the window are drawn in this order, so that dependent products see their prerequisites.
_INITIAL_ORDER = ("savings_account", "credit_card", "mortgage", "personal_loan", "home_insurance", "investment_isa")

_SPEND_Z_MU, _SPEND_Z_SD = 5.3, 1.3  # standardises log(1 + spend over 3 months)
_AFFINITY_SD = 0.5
_DORMANT_EFFECT = -0.6  # no transaction in the previous three months
_CONTACT_EFFECT = 0.3  # contacted about the product in the last 60 days (and did not convert)
# Campaigns
_CAMPAIGN_RUN_PROB = 0.5
_TARGETING_NOISE = 0.5
_RESPONSE_K = 10.0  # response probability = 1 - exp(-K * hazard * appeal * channel effect)
_CONVERSION = 0.75  # responders who open the product within days of responding
_CHANNEL_EFFECT = np.array([1.0, 0.8, 0.8, 0.9, 1.6])  # email, sms, app_push, direct_mail, outbound_call

_NEVER = np.iinfo(np.int64).min // 4
_FOREVER = np.iinfo(np.int64).max // 4
_EPOCH = date(1970, 1, 1)
_DAYS_PER_MONTH = 365.25 / 12


def propensity(product: str) -> Propensity:
    """The product's take-up profile; products without a hand-written one get a stable generic profile."""
    if product in PROPENSITIES:
        return PROPENSITIES[product]
    rng = np.random.default_rng(zlib.crc32(product.encode()))
    return Propensity(
        base=float(rng.uniform(0.002, 0.005)), age_peak=float(rng.uniform(25, 65)), age_width=15,
        age_gain=float(rng.uniform(0.6, 1.2)),
        segment={s: float(rng.normal(0, 0.5)) for s in SEGMENTS[1:]},
        affluence=float(rng.normal(0, 0.3)), digital=float(rng.normal(0, 0.2)), spend=0.3,
        mix={str(rng.choice(CATEGORIES)): 1.0}, onboarding=float(rng.uniform(0, 0.8)),
        lifetime_months=float(rng.uniform(36, 120)),
    )


# --------------------------------------------------------------------------------------------------------------
# Calendar and campaign plan (shared by all chunks)
# --------------------------------------------------------------------------------------------------------------


def _ordinal(d: date) -> int:
    return (d - _EPOCH).days


@dataclass(frozen=True)
class _Calendar:
    start: int  # first day of the history window (days since 1970-01-01)
    end: int  # end_date, the last day with data (inclusive)
    month_start: np.ndarray  # per month of the window
    month_stop: np.ndarray  # exclusive: the next month's first day, or end + 1 in the last month
    month_days: np.ndarray  # days in the calendar month
    month_of_year: np.ndarray
    year: np.ndarray

    @staticmethod
    def build(end_date: date, years: int) -> _Calendar:
        if years < 1:
            raise ValueError(f"years must be at least 1, got {years}")
        y, m = end_date.year - years, end_date.month + 1
        if m == 13:
            y, m = y + 1, 1
        starts, stops, days, moy, yrs = [], [], [], [], []
        end = _ordinal(end_date)
        while date(y, m, 1) <= end_date:
            ny, nm = (y + 1, 1) if m == 12 else (y, m + 1)
            first, following = _ordinal(date(y, m, 1)), _ordinal(date(ny, nm, 1))
            starts.append(first), stops.append(min(following, end + 1)), days.append(following - first)
            moy.append(m), yrs.append(y)
            y, m = ny, nm
        return _Calendar(starts[0], end, *(np.array(v, dtype=np.int64) for v in (starts, stops, days, moy, yrs)))

    def day_cdf(self, m: int) -> np.ndarray:
        """Per category, the cumulative distribution of a transaction over the days of month m."""
        days = int(self.month_days[m])
        first = int(self.month_start[m])
        weekday = (first + np.arange(days) + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
        w = _WEEKDAY[:, weekday].copy()
        w[_K["utilities"], :3] *= 3.0  # direct debits cluster at the start of the month
        if self.month_of_year[m] == 12:
            w[_K["retail"], :24] *= 1.0 + 0.6 * np.arange(1, 25) / 24  # the run-up to Christmas
            w[:, 24] *= 0.3  # Christmas Day
            w[_K["retail"], 25] *= 1.6  # Boxing Day sales
        cdf = np.cumsum(w, axis=1)
        cdf /= cdf[:, -1:]
        cdf[:, -1] = 1.0
        return cdf


@dataclass(frozen=True)
class _CampaignPlan:
    runs: np.ndarray  # (P, M) bool
    launch: np.ndarray  # (P, M) day offset in the month
    channel: np.ndarray  # (P, M) index into CAMPAIGN_CHANNELS
    share: np.ndarray  # (P, M) base contact probability
    appeal: np.ndarray  # (P, M) multiplier of the response probability
    ids: pa.Array  # (P * M) campaign ids

    @staticmethod
    def build(seed: int, cal: _Calendar, products: list[str]) -> _CampaignPlan:
        rng = np.random.default_rng([seed, 2])
        shape = (len(products), len(cal.month_start))
        runs = rng.random(shape) < _CAMPAIGN_RUN_PROB
        launch = rng.integers(0, 20, shape)
        runs &= cal.month_start[None, :] + launch <= cal.end
        channel = rng.choice(len(CAMPAIGN_CHANNELS), size=shape, p=[0.35, 0.15, 0.25, 0.15, 0.10])
        share = rng.uniform(0.008, 0.025, shape)
        appeal = rng.uniform(0.7, 1.3, shape)
        ids = [f"CMP-{y}{mo:02d}-{p}" for p in products for y, mo in zip(cal.year, cal.month_of_year)]
        return _CampaignPlan(runs, launch, channel, share, appeal, pa.array(ids, pa.string()))


# --------------------------------------------------------------------------------------------------------------
# One chunk of customers
# --------------------------------------------------------------------------------------------------------------


@dataclass
class EdpChunk:
    index: int
    first_customer: int  # 0-based number of the chunk's first customer
    customers: int
    tables: dict[str, pa.Table]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _ids(prefix: str, numbers: np.ndarray, width: int, seq: np.ndarray | None = None) -> pa.Array:
    parts = [pa.array(np.full(len(numbers), prefix), pa.string()) if len(numbers) else pa.array([], pa.string()),
             pc.utf8_lpad(pc.cast(pa.array(numbers, pa.int64()), pa.string()), width=width, padding="0")]
    if seq is not None:
        parts += [pa.array(np.full(len(numbers), "-"), pa.string()) if len(numbers) else pa.array([], pa.string()),
                  pc.utf8_lpad(pc.cast(pa.array(seq, pa.int64()), pa.string()), width=3, padding="0")]
    return pc.binary_join_element_wise(*parts, "")


def _sequence(sorted_keys: np.ndarray) -> np.ndarray:
    """1-based position of each row within its run of equal keys (keys sorted)."""
    n = len(sorted_keys)
    if n == 0:
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    lengths = np.diff(np.r_[starts, n])
    return np.arange(n) - np.repeat(starts, lengths) + 1


def _date_array(days: np.ndarray, mask_null: np.ndarray | None = None) -> pa.Array:
    return pa.array(days.astype(np.int32), pa.date32(), mask=mask_null)


class _Simulation:
    """Everything about one chunk of customers, simulated month by month with the chunk's own Generator."""

    def __init__(self, seed: int, chunk_index: int, first: int, n: int, cal: _Calendar, plan: _CampaignPlan,
                 products: list[str]):
        self.rng = np.random.default_rng([seed, 1, chunk_index])
        self.first, self.n, self.cal, self.plan, self.products = first, n, cal, plan, products
        self.profiles = [propensity(p) for p in products]
        self._prepare_profiles()

    # ---- customers -------------------------------------------------------------------------------------------

    def draw_customers(self) -> None:
        rng, n, cal = self.rng, self.n, self.cal
        band = rng.choice(len(AGE_BANDS), size=n, p=[b[2] for b in AGE_BANDS])
        lo = np.array([b[0] for b in AGE_BANDS])[band]
        hi = np.array([b[1] for b in AGE_BANDS])[band]
        age_end = lo + rng.random(n) * (hi - lo)
        self.birth = cal.end - np.floor(age_end * 365.25).astype(np.int64)
        adult = self.birth + 6575  # 18th birthday, near enough
        age_mid = (cal.start - self.birth) / 365.25

        shares = np.array([r[1] for r in REGIONS])
        self.region = rng.choice(len(REGIONS), size=n, p=shares / shares.sum())
        shift = np.array([r[2] for r in REGIONS])[self.region]
        self.affluence = (0.9 * rng.standard_normal(n) + 0.5 * np.exp(-(((age_end - 52) / 14) ** 2))
                          - 0.4 * (age_end < 25) - 0.2 + shift)
        self.digital = 0.8 * rng.standard_normal(n) - 0.035 * (age_end - 45)

        business = (rng.random(n) < 0.08) & (age_end >= 25) & (age_end < 72)
        student = ~business & (age_end < 24) & (rng.random(n) < 0.55)
        seg = np.zeros(n, np.int64)
        seg[self.affluence > 0.9] = SEGMENTS.index("affluent")
        seg[self.affluence > 1.75] = SEGMENTS.index("premier")
        seg[business] = SEGMENTS.index("small_business")
        seg[student] = SEGMENTS.index("student")
        self.segment = seg
        income = self.affluence + 0.5 * rng.standard_normal(n)
        self.income = np.searchsorted(np.array([-0.6, 0.3, 1.0, 1.6]), income)
        self.income[student] = 0

        # Tenure: most customers joined before the window, some during it (younger ones more often)
        new = (rng.random(n) < 0.18 + 0.22 * (age_end < 30)) | (age_mid < 18.5)
        window = cal.end + 1 - cal.start
        joined_new = cal.start + np.floor(rng.random(n) * window).astype(np.int64)
        tenure_years = np.minimum(rng.exponential(8.0, n), np.maximum(age_mid - 18, 0))
        joined_old = cal.start - 1 - np.floor(tenure_years * 365.25).astype(np.int64)
        self.joined = np.maximum(np.where(new, joined_new, joined_old), adult)
        self.joined = np.minimum(self.joined, cal.end)

        # Latent behaviour: intensity (some accounts are not the customer's main account) and spend mix
        dormant = rng.random(n) < 0.08
        self.rate = np.minimum(
            _RATE_SCALE * np.exp(0.9 * rng.standard_normal(n) + 0.2 * self.affluence + 0.15 * self.digital)
            * np.where(dormant, 0.1, 1.0), _RATE_CAP)
        tilt = np.zeros((n, len(CATEGORIES)))
        a = self.affluence[:, None]
        tilt += a * np.array([-0.10, 0.35, 0.50, 0.10, 0.0, 0.20, 0.10, -0.10])
        young = (age_end < 30)[:, None]
        old = (age_end >= 65)[:, None]
        tilt += young * np.array([0.0, 0.4, 0.0, -0.3, -0.4, 0.5, 0.2, 0.0])
        tilt += old * np.array([0.3, -0.3, 0.1, -0.2, 0.3, -0.3, -0.1, 0.0])
        small_business = (seg == SEGMENTS.index("small_business"))[:, None]
        tilt += small_business * np.array([-0.2, 0.0, 0.2, 0.6, 0.0, -0.2, 0.2, 0.7])
        tilt += student[:, None] * np.array([0.0, 0.3, -0.3, -0.5, -0.6, 0.4, 0.1, 0.0])
        tilt += 0.35 * rng.standard_normal((n, len(CATEGORIES)))
        mix = _BASE_SHARE * np.exp(tilt)
        self.mix = mix / mix.sum(axis=1, keepdims=True)
        level = np.exp(0.22 * self.affluence)[:, None] * np.exp(0.2 * rng.standard_normal((n, len(CATEGORIES))))
        business_cost = np.ones(len(CATEGORIES))
        business_cost[[_K["fuel"], _K["other"]]] = 1.4
        level *= np.where((seg == SEGMENTS.index("small_business"))[:, None], business_cost, 1.0)
        self.median = _AMOUNT_MEDIAN * level
        self.affinity = _AFFINITY_SD * rng.standard_normal((n, len(self.products)))

    def customers_table(self) -> pa.Table:
        numbers = np.arange(self.first + 1, self.first + self.n + 1)
        self.customer_ids = _ids("C", numbers, 8)
        return pa.Table.from_arrays([
            self.customer_ids,
            _date_array(self.birth),
            pc.take(pa.array([r[0] for r in REGIONS]), pa.array(self.region)),
            pc.take(pa.array(SEGMENTS), pa.array(self.segment)),
            pc.take(pa.array(INCOME_BANDS), pa.array(self.income)),
            _date_array(self.joined),
        ], schema=_customers_schema)

    # ---- take-up ---------------------------------------------------------------------------------------------

    def _prepare_profiles(self) -> None:
        P, K = len(self.products), len(CATEGORIES)
        index = {p: i for i, p in enumerate(self.products)}
        self.seg_effect = np.array([[prof.segment.get(s, 0.0) for s in SEGMENTS] for prof in self.profiles])
        self.mix_effect = np.array([[prof.mix.get(c, 0.0) for c in CATEGORIES] for prof in self.profiles])
        self.holds_effect = np.zeros((P, P))
        self.recent_effect = np.zeros((P, P))
        for i, prof in enumerate(self.profiles):
            for q, v in prof.holds.items():
                if q in index:
                    self.holds_effect[i, index[q]] = v
            for q, v in prof.recent.items():
                if q in index:
                    self.recent_effect[i, index[q]] = v
        self.season_effect = np.array([[prof.season.get(mo, 0.0) for mo in range(13)] for prof in self.profiles])
        self.spend_held = np.ones((P, K))
        self.spend_new = np.ones((P, K))
        for i, prof in enumerate(self.profiles):
            for c, v in prof.spend_effect.items():
                self.spend_held[i, _K[c]] = v
            for c, v in prof.new_spend_effect.items():
                self.spend_new[i, _K[c]] = v

    def log_hazard(self, p: int, t: int, *, zspend, share, held, recent, month_of_year: int | None,
                   dormant, contacted) -> np.ndarray:
        prof = self.profiles[p]
        age = (t - self.birth) / 365.25
        tenure_months = (t - self.joined) / _DAYS_PER_MONTH
        lh = (math.log(prof.base)
              + prof.age_gain * np.exp(-(((age - prof.age_peak) / prof.age_width) ** 2))
              + prof.old * (age >= 70) + prof.young * (age < 25)
              + self.seg_effect[p][self.segment]
              + prof.affluence * self.affluence + prof.digital * self.digital
              + prof.spend * zspend + share @ self.mix_effect[p]
              + prof.onboarding * ((tenure_months >= 0) & (tenure_months < 3))
              + prof.tenure * np.clip(tenure_months / 120, 0, 2)
              + held @ self.holds_effect[p] + recent @ self.recent_effect[p]
              + self.affinity[:, p])
        if month_of_year is not None:
            lh = lh + self.season_effect[p, month_of_year]
        if dormant is not None:
            lh = lh + _DORMANT_EFFECT * dormant
        if contacted is not None:
            lh = lh + _CONTACT_EFFECT * contacted
        return lh

    def lifetime_days(self, p: int, size: int) -> np.ndarray:
        prof = self.profiles[p]
        months = self.rng.exponential(prof.lifetime_months, size)
        if prof.term_months:
            months = np.minimum(months, self.rng.choice(np.array(prof.term_months), size))
        return np.maximum(np.ceil(months * _DAYS_PER_MONTH), 31).astype(np.int64)

    def _open(self, p: int, who: np.ndarray, day: np.ndarray, close: np.ndarray | None = None) -> None:
        if close is None:
            close = day + self.lifetime_days(p, len(who))
        self.last_open[who, p] = day
        self.open_until[who, p] = close
        self.h_cust.append(who), self.h_prod.append(np.full(len(who), p)), self.h_open.append(day)
        self.h_close.append(close)

    def initial_holdings(self) -> None:
        """Holdings from before the window, for customers who joined before it.

        A product is held at the window start with the probability of an opening/closing process in equilibrium
        over the customer's tenure (at most 10 years): h / (h + c) * (1 - exp(-(h + c) * tenure)), h the hazard
        at the start from the customer's traits, c the closure rate. Its age is the (memoryless) exponential
        lifetime, its remaining life another draw (for loans at most the rest of a term). Some customers also
        held the product earlier and closed it before the window.
        """
        rng, cal, n = self.rng, self.cal, self.n
        before = self.joined < cal.start
        exposure = np.clip((cal.start - self.joined) / _DAYS_PER_MONTH, 0, 120)
        expected = self.mix * self.median * np.exp(_AMOUNT_SIGMA ** 2 / 2) * self.rate[:, None] * 3
        zspend = np.clip((np.log1p(expected.sum(1)) - _SPEND_Z_MU) / _SPEND_Z_SD, -2.5, 2.5)
        share = expected / expected.sum(1, keepdims=True)
        held = np.zeros((n, len(self.products)))
        order = [self.products.index(p) for p in _INITIAL_ORDER if p in self.products]
        order += [i for i in range(len(self.products)) if i not in order]
        for p in order:
            prof = self.profiles[p]
            lh = self.log_hazard(p, cal.start, zspend=zspend, share=share, held=held, recent=np.zeros_like(held),
                                 month_of_year=None, dormant=None, contacted=None)
            h, c = np.exp(lh) * prof.initial, 1.0 / prof.lifetime_months
            p_held = h / (h + c) * (1 - np.exp(-(h + c) * exposure))
            u = rng.random(n)
            who = np.flatnonzero(before & (u < p_held))
            age = rng.exponential(prof.lifetime_months, len(who))
            age = np.where(age < exposure[who], age, rng.random(len(who)) * exposure[who])
            rest = rng.exponential(prof.lifetime_months, len(who))
            if prof.term_months:
                rest = np.minimum(rest, rng.random(len(who)) * rng.choice(np.array(prof.term_months), len(who)))
            day = np.maximum(cal.start - 1 - np.floor(age * _DAYS_PER_MONTH).astype(np.int64), self.joined[who])
            close = np.maximum(cal.start + np.ceil(rest * _DAYS_PER_MONTH).astype(np.int64), day + 31)
            # an earlier holding, closed before the window
            past = np.flatnonzero(before & (rng.random(n) < 0.5 * (1 - np.exp(-h * exposure))))
            back = np.floor(rng.random(len(past)) * exposure[past] * _DAYS_PER_MONTH).astype(np.int64)
            past_open = cal.start - 1 - back
            past_close = past_open + self.lifetime_days(p, len(past))
            first = np.full(n, _FOREVER, np.int64)
            first[who] = day
            keep = (past_close < np.minimum(first[past], cal.start)) & (past_open >= self.joined[past])
            self._open(p, past[keep], past_open[keep], past_close[keep])
            self._open(p, who, day, close)
            held[who, p] = 1.0

    # ---- the monthly simulation ------------------------------------------------------------------------------

    def run(self) -> dict[str, pa.Table]:
        rng, cal, n = self.rng, self.cal, self.n
        P, K, M = len(self.products), len(CATEGORIES), len(cal.month_start)
        self.draw_customers()
        customers = self.customers_table()
        self.last_open = np.full((n, P), _NEVER, np.int64)
        self.open_until = np.full((n, P), _NEVER, np.int64)
        last_contact = np.full((n, P), _NEVER, np.int64)
        self.h_cust, self.h_prod, self.h_open, self.h_close = [], [], [], []
        r_cust, r_prod, r_month, r_contact, r_channel, r_responded, r_response = [], [], [], [], [], [], []
        t_cust, t_ts, t_amount, t_cat, t_chan = [], [], [], [], []
        self.initial_holdings()
        # Behaviour history by month and category, led by 3 burn-in months before the window (not emitted, only
        # so that take-up in the first months sees a past like every later month does)
        counts_hist = np.zeros((n, M + 3, K), np.int16)
        spend_hist = np.zeros((n, M + 3, K), np.float32)
        was_customer = (self.joined < cal.start)[:, None, None]
        burn_in = rng.poisson(np.broadcast_to((self.rate[:, None] * self.mix)[:, None, :], (n, 3, K))) * was_customer
        counts_hist[:, :3, :] = burn_in
        spend_hist[:, :3, :] = burn_in * (self.median * np.exp(_AMOUNT_SIGMA ** 2 / 2))[:, None, :]
        idx = np.arange(n)

        for m in range(M):
            t0, stop, dim = int(cal.month_start[m]), int(cal.month_stop[m]), int(cal.month_days[m])
            moy = int(cal.month_of_year[m])
            lo = np.clip(self.joined - t0, 0, dim)
            hi = np.full(n, stop - t0)
            active = lo < hi
            frac = np.where(active, (hi - lo) / dim, 0.0)

            # what can be observed as of the month start
            spend3 = spend_hist[:, m:m + 3, :].sum(axis=1, dtype=np.float64)  # the previous three months
            total3 = spend3.sum(axis=1)
            zspend = np.clip((np.log1p(total3) - _SPEND_Z_MU) / _SPEND_Z_SD, -2.5, 2.5)
            share = spend3 / np.maximum(total3, 1.0)[:, None]
            dormant = (counts_hist[:, m:m + 3, :].sum(axis=(1, 2)) == 0) & (self.joined < t0 - 90)
            held = (self.last_open <= t0) & (self.open_until > t0)
            recent = held & (t0 - self.last_open <= 90)
            eligible = (self.open_until <= t0) & active[:, None]
            heldf, recentf = held.astype(np.float64), recent.astype(np.float64)

            for p in range(P):
                contacted_before = (t0 - last_contact[:, p]) <= 60
                lh = self.log_hazard(p, t0, zspend=zspend, share=share, held=heldf, recent=recentf,
                                     month_of_year=moy, dormant=dormant, contacted=contacted_before)
                opened = np.full(n, _FOREVER, np.int64)
                contacted_now = np.zeros(n, bool)
                if self.plan.runs[p, m]:
                    launch = t0 + int(self.plan.launch[p, m])
                    contact = launch + rng.integers(0, 5, n)
                    cand = eligible[:, p] & (self.joined <= contact) & (contact <= cal.end)
                    score = lh + _TARGETING_NOISE * rng.standard_normal(n) - math.log(self.profiles[p].base)
                    p_contact = np.minimum(0.5, self.plan.share[p, m] * np.exp(0.8 * score))
                    contacted_now = cand & (rng.random(n) < p_contact)
                    ch = int(self.plan.channel[p, m])
                    effect = _CHANNEL_EFFECT[ch] * (np.exp(0.4 * self.digital) if CAMPAIGN_CHANNELS[ch] == "app_push"
                                                    else 1.0)
                    p_resp = np.minimum(0.6, 1 - np.exp(-_RESPONSE_K * np.exp(lh) * self.plan.appeal[p, m] * effect))
                    responded = contacted_now & (rng.random(n) < p_resp)
                    response = contact + np.minimum(rng.geometric(0.25, n) - 1, 28)
                    responded &= response <= cal.end
                    converts = responded & (rng.random(n) < _CONVERSION)
                    open_day = response + np.minimum(rng.geometric(0.3, n) - 1, 14)
                    converts &= open_day <= cal.end
                    opened = np.where(converts, open_day, opened)
                    who = np.flatnonzero(contacted_now)
                    r_cust.append(who), r_prod.append(np.full(len(who), p)), r_month.append(np.full(len(who), m))
                    r_contact.append(contact[who]), r_channel.append(np.full(len(who), ch))
                    r_responded.append(responded[who]), r_response.append(response[who])
                    last_contact[who, p] = contact[who]
                    lh = lh + _CONTACT_EFFECT * (contacted_now & ~contacted_before)
                hazard = 1 - np.exp(-np.exp(lh) * frac)
                organic = eligible[:, p] & (rng.random(n) < hazard)
                organic_day = t0 + lo + np.floor(rng.random(n) * (hi - lo)).astype(np.int64)
                opened = np.where(organic, np.minimum(opened, organic_day), opened)
                who = np.flatnonzero(opened != _FOREVER)
                self._open(p, who, opened[who])

            # this month's transactions
            effect = np.ones((n, K))
            for p in range(P):
                effect *= np.where(held[:, p:p + 1], self.spend_held[p], 1.0)
                effect *= np.where(recent[:, p:p + 1], self.spend_new[p], 1.0)
            rate = (self.rate * frac)[:, None] * self.mix * _SEASON[moy] * effect
            counts = rng.poisson(rate)
            counts_hist[:, m + 3, :] = counts
            cell = np.repeat(np.arange(n * K), counts.ravel())
            cust, cat = cell // K, cell % K
            amount = (self.median[cust, cat] * _SEASON_AMOUNT[moy, cat]
                      * np.exp(_AMOUNT_SIGMA[cat] * rng.standard_normal(len(cell))))
            amount = np.maximum(np.round(amount, 2), 0.5)
            spend_hist[:, m + 3, :] = np.bincount(cell, weights=amount, minlength=n * K).reshape(n, K)
            # day of the month: weekday and calendar profile, within the customer's active days
            cdf = cal.day_cdf(m)
            flat = (np.arange(K)[:, None] + cdf).ravel()
            u = rng.random(len(cell))
            day = np.minimum(np.searchsorted(flat, cat + u, side="right") - cat * dim, dim - 1)
            lo_c, hi_c = lo[cust], hi[cust]
            outside = (day < lo_c) | (day >= hi_c)
            day = np.where(outside, lo_c + np.floor(rng.random(len(cell)) * (hi_c - lo_c)).astype(np.int64), day)
            hflat = (np.arange(K)[:, None] + _HOUR_CDF).ravel()
            hour = np.minimum(np.searchsorted(hflat, cat + rng.random(len(cell)), side="right") - cat * 24, 23)
            micros = rng.integers(0, 3_600_000_000, len(cell))
            ts = ((t0 + day) * 86_400 + hour * 3_600) * 1_000_000 + micros
            # channel: direct debit for bills; remote by digital engagement; contactless up to the GBP 100 limit
            remote = rng.random(len(cell)) < _sigmoid(_REMOTE_LOGIT[cat] + 0.9 * self.digital[cust])
            app = rng.random(len(cell)) < _sigmoid(0.8 * self.digital[cust])
            tap = (amount <= 100) & (rng.random(len(cell)) < 0.92)
            chan = np.where(remote, np.where(app, 3, 2), np.where(tap, 0, 1))
            bills = cat == _K["utilities"]
            chan = np.where(bills, np.where(rng.random(len(cell)) < 0.85, 4, 2), chan)
            t_cust.append(cust), t_ts.append(ts), t_amount.append(amount), t_cat.append(cat), t_chan.append(chan)

        return {
            CUSTOMERS: customers,
            TRANSACTIONS: self._transactions(t_cust, t_ts, t_amount, t_cat, t_chan),
            HOLDINGS: self._holdings(),
            RESPONSES: self._responses(r_cust, r_prod, r_month, r_contact, r_channel, r_responded, r_response),
        }

    # ---- assembling the chunk's tables -----------------------------------------------------------------------

    def _transactions(self, cust, ts, amount, cat, chan) -> pa.Table:
        cust, ts = np.concatenate(cust), np.concatenate(ts)
        order = np.lexsort((ts, cust))
        cust, ts = cust[order], ts[order]
        seq = _sequence(cust)
        if len(seq) and seq.max() >= TX_ID_STRIDE:
            raise OverflowError(f"a customer has {seq.max()} transactions; transaction ids allow {TX_ID_STRIDE - 1}")
        return pa.Table.from_arrays([
            pa.array((self.first + cust + 1) * TX_ID_STRIDE + seq, pa.int64()),
            pc.take(self.customer_ids, pa.array(cust)),
            pa.array(ts, _UTC_MICROS),
            pa.array(np.concatenate(amount)[order], pa.float64()),
            pc.take(pa.array(CATEGORIES), pa.array(np.concatenate(cat)[order])),
            pc.take(pa.array(TX_CHANNELS), pa.array(np.concatenate(chan)[order])),
        ], schema=_transactions_schema)

    def _holdings(self) -> pa.Table:
        cust, prod = np.concatenate(self.h_cust), np.concatenate(self.h_prod)
        opened, closed = np.concatenate(self.h_open), np.concatenate(self.h_close)
        order = np.lexsort((prod, opened, cust))
        cust, prod, opened, closed = cust[order], prod[order], opened[order], closed[order]
        return pa.Table.from_arrays([
            _ids("H", self.first + cust + 1, 8, _sequence(cust)),
            pc.take(self.customer_ids, pa.array(cust)),
            pc.take(pa.array(self.products), pa.array(prod)),
            _date_array(opened),
            _date_array(np.where(closed > self.cal.end, 0, closed), mask_null=closed > self.cal.end),
        ], schema=_holdings_schema)

    def _responses(self, cust, prod, month, contact, channel, responded, response) -> pa.Table:
        if not cust:
            return _responses_schema.empty_table()
        cust, prod, month = np.concatenate(cust), np.concatenate(prod), np.concatenate(month)
        contact, channel = np.concatenate(contact), np.concatenate(channel)
        responded, response = np.concatenate(responded), np.concatenate(response)
        order = np.lexsort((prod, contact, cust))
        cust, prod, month, contact = cust[order], prod[order], month[order], contact[order]
        channel, responded, response = channel[order], responded[order], response[order]
        months = len(self.cal.month_start)
        return pa.Table.from_arrays([
            _ids("R", self.first + cust + 1, 8, _sequence(cust)),
            pc.take(self.plan.ids, pa.array(prod * months + month)),
            pc.take(self.customer_ids, pa.array(cust)),
            pc.take(pa.array(self.products), pa.array(prod)),
            _date_array(contact),
            pc.take(pa.array(CAMPAIGN_CHANNELS), pa.array(channel)),
            pa.array(responded, pa.bool_()),
            _date_array(np.where(responded, response, 0), mask_null=~responded),
        ], schema=_responses_schema)


def generate_chunks(customers: int, *, seed: int = 7, end_date: date = date(2026, 10, 31), years: int = 3,
                    products: list[str], chunk_size: int | None = None,
                    log: Callable[[str], None] = print) -> Iterator[EdpChunk]:
    """Lazily simulate the local EDP chunk by chunk; each chunk holds all four tables for its customers.

    `chunk_size` (default CHUNK_CUSTOMERS) exists for tests: a seed's data is what it is at CHUNK_CUSTOMERS.
    """
    chunk_size = chunk_size or CHUNK_CUSTOMERS
    if customers < 1:
        raise ValueError(f"customers must be at least 1, got {customers}")
    if not products or len(set(products)) != len(products):
        raise ValueError(f"products must be a non-empty list of distinct product codes, got {products!r}")
    cal = _Calendar.build(end_date, years)
    plan = _CampaignPlan.build(seed, cal, list(products))
    chunks = math.ceil(customers / chunk_size)
    for i in range(chunks):
        started = time.perf_counter()
        first = i * chunk_size
        n = min(chunk_size, customers - first)
        tables = _Simulation(seed, i, first, n, cal, plan, list(products)).run()
        log(f"EDP seed chunk {i + 1}/{chunks}: customers {first + 1}-{first + n}, "
            + ", ".join(f"{name.split('.')[-1]} {t.num_rows}" for name, t in tables.items())
            + f" ({time.perf_counter() - started:.1f}s)")
        yield EdpChunk(i, first, n, tables)


# --------------------------------------------------------------------------------------------------------------
# Writing and registering
# --------------------------------------------------------------------------------------------------------------


def _write(location: str, reader: pa.RecordBatchReader, metadata: dict[str, str]) -> int:
    Path(location).mkdir(parents=True, exist_ok=True)
    write_deltalake(location, reader, mode="overwrite", schema_mode="overwrite",
                    commit_properties=CommitProperties(custom_metadata=metadata))
    return DeltaTable(location).version()


def seed_edp(catalog: LocalCatalog, *, customers: int = 10_000, seed: int = 7, end_date: date = date(2026, 10, 31),
             years: int = 3, products: list[str], log: Callable[[str], None] = print) -> dict[str, int]:
    """Write the four synthetic EDP products as Delta tables into the local catalog and register them.

    One delta-rs commit per table (an overwrite: re-seeding makes a new version). Returns rows per table name.
    """
    started = time.perf_counter()
    common = {"seed": seed, "customers": customers, "end_date": end_date.isoformat(), "years": years,
              "products": ",".join(products), "generator": GENERATOR, "generator_version": GENERATOR_VERSION,
              "chunk_customers": CHUNK_CUSTOMERS}
    log(f"EDP seed: {customers} customers, seed {seed}, {years} years to {end_date}, "
        f"{math.ceil(customers / CHUNK_CUSTOMERS)} chunk(s) of up to {CHUNK_CUSTOMERS} customers")
    staging = Path(catalog.home) / "catalog" / "_staging" / f"edp-seed-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    rows = dict.fromkeys(EDP_PRODUCTS, 0)
    spilled = [CUSTOMERS, HOLDINGS, RESPONSES]
    try:
        sinks = {name: pa.ipc.new_stream(str(staging / f"{name}.arrows"), EDP_PRODUCTS[name].schema)
                 for name in spilled}

        def transaction_batches() -> Iterator[pa.RecordBatch]:
            chunks = generate_chunks(customers, seed=seed, end_date=end_date, years=years, products=products,
                                     log=log)
            for chunk in chunks:
                for name in spilled:
                    sinks[name].write_table(chunk.tables[name])
                    rows[name] += chunk.tables[name].num_rows
                table = chunk.tables.pop(TRANSACTIONS)
                rows[TRANSACTIONS] += table.num_rows
                chunk.tables.clear()
                yield from table.to_batches(max_chunksize=BATCH_ROWS)
                del table

        def commit(name: str, reader: pa.RecordBatchReader) -> None:
            product = EDP_PRODUCTS[name]
            location = catalog.managed_location(name)
            # the row count is only known once the stream is consumed; the commit records the seed and settings
            version = _write(location, reader, {**{k: str(v) for k, v in common.items()},
                                                "edp_layer": product.layer, "table": name})
            catalog.register(name, location, owner=EDP_OWNER, comment=product.description,
                             properties={**common, "edp_layer": product.layer, "rows": rows[name],
                                         "delta_version": version})
            elapsed = time.perf_counter() - started
            log(f"EDP seed: {name} committed, {rows[name]} rows, version {version} ({elapsed:.0f}s)")

        commit(TRANSACTIONS, pa.RecordBatchReader.from_batches(_transactions_schema, transaction_batches()))
        for sink in sinks.values():
            sink.close()
        for name in spilled:
            with pa.memory_map(str(staging / f"{name}.arrows")) as source:
                commit(name, pa.ipc.open_stream(source))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging.parent.rmdir()  # only if no other seed is staging
    return {name: rows[name] for name in EDP_PRODUCTS}

"""Sample data for the quickstart: customers and orders in a DuckDB warehouse.

The first run creates ``raw.customers`` (5,000 rows) and ``raw.orders`` (20,000 rows) with a fixed
seed. Every later run applies a small batch of changes (new customers, updated lifetime values, churn,
removed customers) so a second ``dinmo demo`` shows a delta sync.

What landed where: the files in the bucket (:func:`list_destinations`) and the records the local
HubSpot fake holds (:func:`list_fake_records`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import duckdb

from dinmo_dagster.config import Project
from dinmo_dagster.resources import build_resources, destination_of

CUSTOMERS_SQL = """
create table raw.customers as
select
    i as customer_id,
    'customer' || i || '@' || (['example.com','mail.fr','post.de','inbox.es','web.co.uk'])[1 + i % 5] as email,
    '+33' || lpad(cast((i * 7919) % 1000000000 as varchar), 9, '0') as phone,
    (['Camille','Lukas','Sofia','Liam','Emma','Jonas','Léa','Mateo','Zoë','Noah'])[1 + i % 10] as first_name,
    (['FR','DE','ES','IT','GB','NL','BE','US'])[1 + (i * 31) % 8] as country,
    (['free','starter','pro','enterprise'])[1 + (i * 17) % 4] as plan,
    cast(round(((i * 104729) % 200000) / 100.0, 2) as decimal(12, 2)) as ltv,
    (i * 13) % 11 = 0 as churned,
    timestamp '2023-01-01' + to_seconds(cast((i * 86413) % 60000000 as bigint)) as signup_at,
    timestamp '2025-01-01' + to_seconds(cast(i as bigint) * 60) as updated_at,
    case when i % 7 = 0 then null else 'referral-' || (i % 13) end as acquisition_channel
from range(1, 5001) t(i)
"""

ORDERS_SQL = """
create table raw.orders as
select
    i as order_id,
    1 + (i * 7) % 5000 as customer_id,
    (['shoes','shirts','bags','hats','jackets'])[1 + (i * 11) % 5] as product_type,
    cast(round(((i * 7727) % 30000) / 100.0 + 5, 2) as decimal(10, 2)) as amount,
    current_timestamp::timestamp - to_seconds(cast((i * 3571) % 31536000 as bigint)) as ordered_at
from range(1, 20001) t(i)
"""

CHANGES_SQL = [
    # new customers
    """insert into raw.customers
       select max_id + j, 'new' || (max_id + j) || '@example.com', null, 'Ana', 'FR', 'pro',
              cast(900 + j as decimal(12, 2)), false, current_timestamp::timestamp, current_timestamp::timestamp,
              'demo'
       from (select max(customer_id) as max_id from raw.customers), range(1, 26) t(j)""",
    # lifetime value grows for some VIPs
    """update raw.customers set ltv = ltv + 100, updated_at = current_timestamp::timestamp
       where customer_id in (select customer_id from raw.customers where country in ('FR','DE')
                             order by customer_id limit 40)""",
    # a few churn
    """update raw.customers set churned = true, updated_at = current_timestamp::timestamp
       where customer_id in (select customer_id from raw.customers where not churned
                             order by customer_id desc limit 15)""",
    # and a few leave
    """delete from raw.customers where customer_id in (
         select customer_id from raw.customers order by customer_id limit 10 offset 100)""",
]


def warehouse_path(project: Project) -> Path:
    src = project.sources["warehouse"]
    return project.resolve_path(src.path)


def prepare_warehouse(project: Project) -> str:
    """Create the sample data on the first run; apply a batch of changes on later runs."""
    path = warehouse_path(project)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    try:
        con.execute("create schema if not exists raw")
        exists = con.execute(
            "select count(*) from information_schema.tables where table_schema = 'raw' and table_name = 'customers'"
        ).fetchone()[0]
        if not exists:
            con.execute(CUSTOMERS_SQL)
            con.execute(ORDERS_SQL)
            n = con.execute("select count(*) from raw.customers").fetchone()[0]
            m = con.execute("select count(*) from raw.orders").fetchone()[0]
            return f"created the quickstart warehouse {path}: {n} customers, {m} orders"
        for sql in CHANGES_SQL:
            con.execute(sql)
        return (f"applied sample changes to {path}: 25 new customers, 40 lifetime values raised, "
                "15 churned, 10 removed")
    finally:
        con.close()


def list_destinations(project: Project) -> list[str]:
    """Every object under the activations' folders, with its size, as URIs."""
    lines: list[str] = []
    with dg.build_resources(build_resources(project)) as resources:
        for name, a in project.activations.items():
            dest = destination_of(resources, a.destination)
            if dest is None:
                continue
            prefix = a.folder.strip("/") + "/" if a.folder else ""
            for path in sorted(dest.list(prefix)):
                size = len(dest.read_bytes(path))
                lines.append(f"{dest.uri(path)}  ({size} bytes)  <- {name}")
    return lines


SHOWN_RECORDS = 3  # records of a fake shown under its count


def list_fake_records(project: Project, destination: str, url: str,
                      records: dict[str, dict[str, Any]]) -> list[str]:
    """The count of the records a local platform fake holds, then the first few by key with their
    properties (HubSpot's own ``hs_object_id`` left out).

    ``records`` maps each record's unique value (a contact's e-mail) to its properties.
    """
    dest = project.destinations[destination]
    obj = getattr(dest, "object", "records")
    fed_by = ", ".join(name for name, a in project.activations.items() if a.destination == destination)
    lines = [f"{dest.type} {destination} (local fake at {url}): {len(records)} {obj}  <- {fed_by}"]
    for key in sorted(records)[:SHOWN_RECORDS]:
        # the key (a contact's e-mail) heads the line already; hs_object_id is HubSpot's, not the segment's
        shown = ", ".join(f"{k}={v}" for k, v in records[key].items() if k != "hs_object_id" and v != key)
        lines.append(f"  {key}: {shown}")
    if len(records) > SHOWN_RECORDS:
        lines.append(f"  ... and {len(records) - SHOWN_RECORDS} more")
    return lines

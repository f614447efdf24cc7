#!/usr/bin/env python3
"""The analyst example of README: query a fhirlake lake with DuckDB (pip install duckdb).

Usage: python3 tests/analyst/duckdb_example.py LAKE
"""

import json
import sys
from pathlib import Path

import duckdb

lake = Path(sys.argv[1] if len(sys.argv) > 1 else "lake")
snap = lake / "snapshots" / (lake / "CURRENT").read_text().strip()
files = json.loads((snap / "manifest.json").read_text())["files"]


def table(t):
    """The snapshot's files of a type, as a DuckDB list literal."""
    return [str(lake / f["path"]) for f in files[t]]


# Claims per member and type, with the first service date (typed index column).
print(duckdb.sql(f"""
    SELECT patient_id,
           resource->>'$.type.coding[0].code' AS claim_type,
           count(*) AS claims,
           min(sp_billable_period_start__start)::DATE AS first_service
    FROM read_parquet({table('ExplanationOfBenefit')})
    GROUP BY ALL ORDER BY patient_id, claim_type
"""))

# One member's claim totals by adjudication category.
totals = duckdb.sql(f"""
    SELECT id,
           t->>'$.category.coding[0].code' AS category,
           CAST(t->>'$.amount.value' AS DECIMAL(12,2)) AS amount
    FROM (SELECT id, unnest(CAST(resource->'$.total' AS JSON[])) AS t
          FROM read_parquet({table('ExplanationOfBenefit')}) WHERE patient_id = '567834')
    ORDER BY id, category
""")
print(totals)
assert len(totals.fetchall()) > 0, "no totals for member 567834"

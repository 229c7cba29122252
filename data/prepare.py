#!/usr/bin/env python3
"""Regenerate ``data/adult.csv.gz`` and ``data/german.csv.gz`` from the
``fairness`` 0.1.8 wheel (Friedler et al. 2019).

This script is *provenance only*: nothing in the project imports it at run
time. It uses only the Python standard library.

Obtaining the wheel
-------------------
The input is the wheel of the PyPI package ``fairness==0.1.8`` (the code
accompanying Friedler et al., "A comparative study of fairness-enhancing
interventions in machine learning", FAT* 2019). Download it without
installing it or its dependencies::

    pip download --no-deps fairness==0.1.8 -d /tmp/fw
    python data/prepare.py --wheel /tmp/fw/fairness-0.1.8-py3-none-any.whl

(sha256 of the wheel used to produce the shipped files:
7f21cf0943f2a6fef7f7597eb99461bd4b2f7a26fe9810964675496cde6992e1.)

The two CSVs are read straight out of the zip archive; nothing is unpacked to
disk. Before use, each member is checked against the sha256 listed in the
wheel's own ``RECORD`` file and against the sha256 pinned below, so a
different or corrupted wheel is rejected.

What it does
------------
Adult (``fairness/data/raw/adult.csv``, UCI Adult training split):
  * all 32,561 rows and all 15 columns are kept, in the source order;
  * columns are renamed to snake_case (see ``ADULT_COLUMNS``);
  * surrounding whitespace is stripped from every value;
  * the missing-value marker ``?`` is kept verbatim;
  * the target ``income`` keeps the values ``<=50K`` / ``>50K``.

German (``fairness/data/raw/german.csv``, UCI Statlog German credit):
  * A-codes are decoded into short lowercase labels following the code table
    in ``fairness/data/raw/german.txt`` (see ``GERMAN_CODES``); every code in
    the data must be in the table, or the script fails;
  * ``personal_status`` (a combined sex + marital-status code) is split into
    ``sex`` (A91/A93/A94 -> male, A92/A95 -> female), inserted right after
    it, and ``personal_status`` keeps only the marital-status part;
  * ``age_group`` ("under 25" if age < 25 else "25 and over") is inserted
    right after ``age``;
  * the target ``credit`` is renamed ``credit_risk``: 1 -> "good",
    2 -> "bad"; it stays the last column;
  * the numeric columns are written as plain integers; all other column
    names are kept as in the source (they are already snake_case).

Output format: UTF-8 CSV, comma-separated, header row, "\\n" line endings,
minimal quoting, gzip-compressed with mtime=0, no embedded filename and
compression level 9. Re-running on the same wheel gives byte-identical
files (this assumes the same zlib; the sha256 of the *decompressed* CSV,
which is also printed, does not depend on zlib).
"""

from __future__ import annotations

import argparse
import base64
import csv
import gzip
import hashlib
import io
import pathlib
import sys
import zipfile

ADULT_MEMBER = "fairness/data/raw/adult.csv"
GERMAN_MEMBER = "fairness/data/raw/german.csv"
GERMAN_DOC_MEMBER = "fairness/data/raw/german.txt"
RECORD_MEMBER = "fairness-0.1.8.dist-info/RECORD"

# sha256 of the raw members of fairness-0.1.8-py3-none-any.whl.
PINNED_SHA256 = {
    ADULT_MEMBER: "c30ce1e55a965b04950321870db74c19f4aa437120a692f32e72f6a4fa31c418",
    GERMAN_MEMBER: "532082711a8ec4df65cf60775eb7d59d3a5e3458c5a88695630beffd96dfff86",
    GERMAN_DOC_MEMBER: "c0c9576b79710d62aa8e0701cbb9cc02e86d3b354d5ec997ade875c66c32d46e",
}

ADULT_ROWS = 32561
GERMAN_ROWS = 1000

# Source header -> output header (order preserved).
ADULT_COLUMNS = [
    ("age", "age"),
    ("workclass", "workclass"),
    ("fnlwgt", "fnlwgt"),
    ("education", "education"),
    ("education-num", "education_num"),
    ("marital-status", "marital_status"),
    ("occupation", "occupation"),
    ("relationship", "relationship"),
    ("race", "race"),
    ("sex", "sex"),
    ("capital-gain", "capital_gain"),
    ("capital-loss", "capital_loss"),
    ("hours-per-week", "hours_per_week"),
    ("native-country", "native_country"),
    ("income-per-year", "income"),
]

GERMAN_SOURCE_COLUMNS = [
    "status", "month", "credit_history", "purpose", "credit_amount",
    "savings", "employment", "investment_as_income_percentage",
    "personal_status", "other_debtors", "residence_since", "property",
    "age", "installment_plans", "housing", "number_of_credits",
    "skill_level", "people_liable_for", "telephone", "foreign_worker",
    "credit",
]

GERMAN_NUMERIC = {
    "month", "credit_amount", "investment_as_income_percentage",
    "residence_since", "age", "number_of_credits", "people_liable_for",
}

# Code table transcribed from german.txt (attribute number in brackets).
# Labels are shortened; the datasheet data/german.md gives the full wording.
GERMAN_CODES = {
    "status": {  # [1] status of existing checking account
        "A11": "< 0 DM",
        "A12": "0 to 200 DM",
        "A13": ">= 200 DM",  # ">= 200 DM / salary assignments for >= 1 year"
        "A14": "no checking account",
    },
    "credit_history": {  # [3]
        "A30": "no credits taken/all paid back duly",
        "A31": "all credits at this bank paid back duly",
        "A32": "existing credits paid back duly",
        "A33": "delay in paying off in the past",
        "A34": "critical account/other credits elsewhere",
    },
    "purpose": {  # [4]
        "A40": "car (new)",
        "A41": "car (used)",
        "A42": "furniture/equipment",
        "A43": "radio/television",
        "A44": "domestic appliances",
        "A45": "repairs",
        "A46": "education",
        "A47": "vacation",  # "(vacation - does not exist?)"; absent in data
        "A48": "retraining",
        "A49": "business",
        "A410": "others",
    },
    "savings": {  # [6] savings account/bonds
        "A61": "< 100 DM",
        "A62": "100 to 500 DM",
        "A63": "500 to 1000 DM",
        "A64": ">= 1000 DM",
        "A65": "unknown/no savings account",
    },
    "employment": {  # [7] present employment since
        "A71": "unemployed",
        "A72": "< 1 year",
        "A73": "1 to 4 years",
        "A74": "4 to 7 years",
        "A75": ">= 7 years",
    },
    "personal_status": {  # [9] marital-status part only; sex split off
        "A91": "divorced/separated",
        "A92": "divorced/separated/married",
        "A93": "single",
        "A94": "married/widowed",
        "A95": "single",  # female single; absent in data
    },
    "other_debtors": {  # [10] other debtors / guarantors
        "A101": "none",
        "A102": "co-applicant",
        "A103": "guarantor",
    },
    "property": {  # [12]
        "A121": "real estate",
        "A122": "building society savings/life insurance",
        "A123": "car or other",
        "A124": "unknown/no property",
    },
    "installment_plans": {  # [14] other installment plans
        "A141": "bank",
        "A142": "stores",
        "A143": "none",
    },
    "housing": {  # [15]
        "A151": "rent",
        "A152": "own",
        "A153": "for free",
    },
    "skill_level": {  # [17] job
        "A171": "unemployed/unskilled non-resident",
        "A172": "unskilled resident",
        "A173": "skilled employee/official",
        "A174": "management/self-employed/highly qualified",
    },
    "telephone": {  # [19]
        "A191": "none",
        "A192": "yes",  # "yes, registered under the customers name"
    },
    "foreign_worker": {  # [20]
        "A201": "yes",
        "A202": "no",
    },
}

# [9] sex part of the combined personal_status code.
GERMAN_SEX = {
    "A91": "male",
    "A92": "female",
    "A93": "male",
    "A94": "male",
    "A95": "female",
}

GERMAN_CREDIT = {"1": "good", "2": "bad"}

AGE_THRESHOLD = 25


def fail(message: str) -> None:
    sys.exit(f"prepare.py: error: {message}")


def read_member(wheel: zipfile.ZipFile, name: str, record: dict) -> bytes:
    """Return a member's bytes after checking it against RECORD and the pin."""
    data = wheel.read(name)
    digest = hashlib.sha256(data)
    record_hash = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    if record.get(name) != record_hash:
        fail(f"{name}: sha256 does not match the wheel's RECORD")
    if digest.hexdigest() != PINNED_SHA256[name]:
        fail(f"{name}: sha256 {digest.hexdigest()} is not the pinned "
             f"{PINNED_SHA256[name]} (is this fairness 0.1.8?)")
    return data


def read_record(wheel: zipfile.ZipFile) -> dict:
    record = {}
    text = wheel.read(RECORD_MEMBER).decode("utf-8")
    for row in csv.reader(io.StringIO(text)):
        if len(row) >= 2 and row[1].startswith("sha256="):
            record[row[0]] = row[1][len("sha256="):]
    return record


def parse_csv(data: bytes) -> list:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def check_code_table(doc: str) -> None:
    """Every code used in GERMAN_CODES / GERMAN_SEX must appear in german.txt."""
    codes = set(GERMAN_SEX)
    for mapping in GERMAN_CODES.values():
        codes.update(mapping)
    for code in sorted(codes):
        if f"{code} :" not in doc:
            fail(f"german code {code} is not described in {GERMAN_DOC_MEMBER}")


def prepare_adult(rows: list) -> list:
    header, body = rows[0], rows[1:]
    expected = [src for src, _ in ADULT_COLUMNS]
    if [h.strip() for h in header] != expected:
        fail(f"unexpected adult header: {header}")
    if len(body) != ADULT_ROWS:
        fail(f"adult: expected {ADULT_ROWS} rows, found {len(body)}")
    out = [[dst for _, dst in ADULT_COLUMNS]]
    for i, row in enumerate(body, start=2):
        if len(row) != len(ADULT_COLUMNS):
            fail(f"adult line {i}: {len(row)} fields")
        out.append([value.strip() for value in row])
    return out


def prepare_german(rows: list) -> list:
    header, body = rows[0], rows[1:]
    if [h.strip() for h in header] != GERMAN_SOURCE_COLUMNS:
        fail(f"unexpected german header: {header}")
    if len(body) != GERMAN_ROWS:
        fail(f"german: expected {GERMAN_ROWS} rows, found {len(body)}")

    out_header = []
    for name in GERMAN_SOURCE_COLUMNS:
        if name == "credit":
            out_header.append("credit_risk")
            continue
        out_header.append(name)
        if name == "personal_status":
            out_header.append("sex")
        elif name == "age":
            out_header.append("age_group")
    out = [out_header]

    for i, row in enumerate(body, start=2):
        if len(row) != len(GERMAN_SOURCE_COLUMNS):
            fail(f"german line {i}: {len(row)} fields")
        record = dict(zip(GERMAN_SOURCE_COLUMNS, (v.strip() for v in row)))
        new = []
        for name in GERMAN_SOURCE_COLUMNS:
            value = record[name]
            if name in GERMAN_NUMERIC:
                try:
                    new.append(str(int(value)))
                except ValueError:
                    fail(f"german line {i}: {name}={value!r} is not an integer")
                if name == "age":
                    group = "under 25" if int(value) < AGE_THRESHOLD else "25 and over"
                    new.append(group)
            elif name == "credit":
                if value not in GERMAN_CREDIT:
                    fail(f"german line {i}: credit={value!r}")
                new.append(GERMAN_CREDIT[value])
            else:
                mapping = GERMAN_CODES[name]
                if value not in mapping:
                    fail(f"german line {i}: unknown code {name}={value!r}")
                new.append(mapping[value])
                if name == "personal_status":
                    new.append(GERMAN_SEX[value])
        out.append(new)
    return out


def to_csv_bytes(rows: list) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def write_gzip(path: pathlib.Path, payload: bytes) -> bytes:
    """Deterministic gzip: mtime=0, empty filename, level 9."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer,
                       compresslevel=9, mtime=0) as gz:
        gz.write(payload)
    blob = buffer.getvalue()
    path.write_bytes(blob)
    return blob


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Build data/adult.csv.gz and data/german.csv.gz from the "
                    "fairness==0.1.8 wheel.")
    parser.add_argument("--wheel", required=True, type=pathlib.Path,
                        help="path to fairness-0.1.8-py3-none-any.whl")
    parser.add_argument("--out-dir", type=pathlib.Path,
                        default=pathlib.Path(__file__).resolve().parent,
                        help="output directory (default: the directory of "
                             "this script, i.e. data/)")
    args = parser.parse_args(argv)

    if not args.wheel.is_file():
        fail(f"wheel not found: {args.wheel} (see the docstring: "
             "pip download --no-deps fairness==0.1.8 -d /tmp/fw)")
    wheel_sha = hashlib.sha256(args.wheel.read_bytes()).hexdigest()
    print(f"wheel  {args.wheel.name}  sha256 {wheel_sha}")

    with zipfile.ZipFile(args.wheel) as wheel:
        record = read_record(wheel)
        adult_raw = read_member(wheel, ADULT_MEMBER, record)
        german_raw = read_member(wheel, GERMAN_MEMBER, record)
        german_doc = read_member(wheel, GERMAN_DOC_MEMBER, record)

    check_code_table(german_doc.decode("utf-8"))
    outputs = [
        ("adult.csv.gz", prepare_adult(parse_csv(adult_raw))),
        ("german.csv.gz", prepare_german(parse_csv(german_raw))),
    ]

    args.out_dir.mkdir(parents=True, exist_ok=True)
    for filename, rows in outputs:
        payload = to_csv_bytes(rows)
        blob = write_gzip(args.out_dir / filename, payload)
        print(f"{filename:14s} rows {len(rows) - 1:6d}  columns {len(rows[0]):2d}  "
              f"bytes {len(blob):7d}")
        print(f"{'':14s} sha256 (gz)  {hashlib.sha256(blob).hexdigest()}")
        print(f"{'':14s} sha256 (csv) {hashlib.sha256(payload).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Builds the small GeoIP (City) and ASN databases used by Ward's tests and demo.

The networks are documentation and test ranges (RFC 5737, RFC 3849) plus a few public
ranges the generator uses; the data is invented. Run: python3 scripts/make-test-mmdb.py
(needs `pip install mmdb-writer`). Output: rules/geo/ward-test-city.mmdb, ward-test-asn.mmdb.
"""
import os
import sys

from mmdb_writer import MMDBWriter, MmdbU32
from netaddr import IPSet

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "rules", "geo")
os.makedirs(out, exist_ok=True)

CITY = [
    ("203.0.113.0/24", "NL", "Amsterdam"),
    ("198.51.100.0/24", "US", "Ashburn"),
    ("185.220.101.0/24", "DE", "Frankfurt am Main"),
    ("45.155.205.0/24", "RU", "Moscow"),
    ("2001:db8::/32", "JP", "Tokyo"),
]
ASN = [
    ("203.0.113.0/24", 64500, "Example Transit B.V."),
    ("198.51.100.0/24", 64501, "Example Cloud Inc."),
    ("185.220.101.0/24", 64502, "Example Anonymizer e.V."),
    ("45.155.205.0/24", 64503, "Example Bulletproof LLC"),
    ("2001:db8::/32", 64504, "Example IPv6 KK"),
]

city = MMDBWriter(ip_version=6, database_type="GeoIP2-City", description={"en": "Ward test City database"}, ipv4_compatible=True)
for net, cc, name in CITY:
    city.insert_network(IPSet([net]), {"country": {"iso_code": cc}, "city": {"names": {"en": name}}})
city.to_db_file(os.path.join(out, "ward-test-city.mmdb"))

asn = MMDBWriter(ip_version=6, database_type="GeoLite2-ASN", description={"en": "Ward test ASN database"}, ipv4_compatible=True)
for net, number, org in ASN:
    asn.insert_network(IPSet([net]), {"autonomous_system_number": MmdbU32(number), "autonomous_system_organization": org})
asn.to_db_file(os.path.join(out, "ward-test-asn.mmdb"))
print("wrote", out, file=sys.stderr)

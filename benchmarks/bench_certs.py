"""Bulk device certificate issuance: certs/s for 10,000 EC P-256 device certs from an EC CA.

Run: .venv/bin/python benchmarks/bench_certs.py [COUNT]
"""

import os
import sys
import time

from certs import CertificateAuthority


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    ca = CertificateAuthority.create(common_name="Bench CA")
    names = [f"bench-{i:05d}" for i in range(count)]
    start = time.perf_counter()
    ids = {cert.certificate_id for cert in ca.issue_device_certs(names)}
    elapsed = time.perf_counter() - start
    if len(ids) != count:
        sys.exit(f"expected {count} distinct certificate ids, got {len(ids)}")
    print(
        f"{count} device certs (new P-256 key + cert each) in {elapsed:.2f}s: "
        f"{count / elapsed:,.0f} certs/s on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()

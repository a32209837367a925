"""Which stored sweep docs/rate.md reports, and which it compares with (the README's rate
paragraph quotes that page): one place for tests/test_rate_report.py and tests/test_readme.py."""

PAGE_SOURCE = "docs/rate_iso_rerun"
PAGE_COMPARES = ["docs/rate_iso", "docs/rate_iso_rerun_budget2", "docs/rate_iso_rerun_sigma2"]
PAGE_COMMAND = (f"sgm-ref experiment rate-report {PAGE_SOURCE} --out docs/rate.md "
                + " ".join(f"--compare {c}" for c in PAGE_COMPARES))

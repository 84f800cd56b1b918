"""bench/test_report.py — unit tests of bench/report.py's reading of the raw figures (run by `make test`)."""

import statistics
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402


class ReadInterleaved(unittest.TestCase):
    def test_a_round_without_the_variants_transactions_is_left_out(self):
        # pgbench logged no transaction of a in round 3 of the one-client scan (2026-12-06's full run): the report
        # said nan, and the scan's goal "missed".
        rows = ["workload\tmeasure\tvariant\tround\tmean_us",
                "scan\tmix\ta\t1\t100.0", "scan\tmix\tc\t1\t110.0",
                "scan\tmix\ta\t2\t-nan", "scan\tmix\tc\t2\t90.0",
                "scan\tmix\ta\t3\t120.0", "scan\tmix\tc\t3\t120.0"]
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "interleaved.tsv"
            path.write_text("\n".join(rows) + "\n")
            figures = report.read_interleaved(path)
        a, c = figures[("scan", "mix", "a")], figures[("scan", "mix", "c")]
        self.assertEqual(sorted(a), [1, 3])
        ratios = [a[r] / c[r] for r in sorted(a) if r in c]
        self.assertAlmostEqual(statistics.median(ratios), (100 / 110 + 1) / 2)


if __name__ == "__main__":
    unittest.main()

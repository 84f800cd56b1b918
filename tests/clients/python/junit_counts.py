"""tests/clients/python/junit_counts.py REPORT.xml — print "PASSED FAILED" for a pytest JUnit report: a skipped test
counts as failed (every test must run), and a missing or unreadable report as one failure. Used by the run.sh of the
client suite and of the SDK suite (clients/python/tests/run.sh)."""

import sys
import xml.etree.ElementTree as ET

try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError, IndexError):
    print(0, 1)  # pytest did not get to write a report: count the pass as one failure
    sys.exit()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
total = sum(int(s.get("tests", 0)) for s in suites)
bad = sum(int(s.get(k, 0)) for s in suites for k in ("failures", "errors", "skipped"))
# A test whose set-up and teardown both failed is reported twice: never count more failures than tests.
print(max(total - bad, 0), max(bad, 0) if total else 1)

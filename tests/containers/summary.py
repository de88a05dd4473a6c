"""The version matrix's summary (scripts/test-matrix): one row per run, from the JUnit report
nextest wrote in target/matrix/RUN/junit.xml and the run's meta file. A test that passed but
printed a line starting with "skipped:" is counted as skipped, with its reason listed below.

    python3 summary.py MATRIX_DIR RUN...
"""

import os
import sys
import xml.etree.ElementTree as ET


def meta(path):
    values = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                values[key] = value
    except OSError:
        pass
    return values


def skip_reason(case):
    for tag in ("system-out", "system-err"):
        for node in case.findall(tag):
            for line in (node.text or "").splitlines():
                if line.startswith("skipped:"):
                    return line[len("skipped:"):].strip()
    return None


def main():
    matrix, runs = sys.argv[1], sys.argv[2:]
    rows, notes, failures = [], [], []
    for run in runs:
        info = meta(os.path.join(matrix, run, "meta"))
        report = os.path.join(matrix, run, "junit.xml")
        passed = failed = skipped = 0
        if os.path.exists(report):
            for case in ET.parse(report).getroot().iter("testcase"):
                suite = case.get("classname", "").rsplit("::", 1)[-1]
                name = f"{suite}::{case.get('name')}"
                if case.find("failure") is not None or case.find("error") is not None:
                    failed += 1
                    failures.append(f"{run}: {name}")
                elif case.find("skipped") is not None:
                    skipped += 1
                    notes.append(f"{run}: {name}: ignored")
                elif (reason := skip_reason(case)) is not None:
                    skipped += 1
                    notes.append(f"{run}: {name}: {reason}")
                else:
                    passed += 1
        else:
            failures.append(f"{run}: no results (the run did not start)")
        rows.append((info.get("nginx", "?"), info.get("distribution", "?"),
                     info.get("tomcat", "?"), run, passed, failed, skipped))

    header = ("nginx", "distribution", "Tomcat", "run", "passed", "failed", "skipped")
    table = [header] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    if notes:
        print("Skipped:")
        for note in notes:
            print(f"  {note}")
    if failures:
        print("Failed:")
        for failure in failures:
            print(f"  {failure}")
    print()
    for i, row in enumerate(table):
        print("  ".join(c.ljust(w) if j < 4 else c.rjust(w)
                        for j, (c, w) in enumerate(zip(row, widths))).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    total_failed = sum(r[5] for r in rows) + sum(1 for r in rows if r[4] == 0 and r[5] == 0)
    print(f"\nversion matrix: {len(rows)} runs, "
          f"{'all passed' if total_failed == 0 else f'{total_failed} failed'}")


if __name__ == "__main__":
    main()

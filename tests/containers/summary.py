"""The version matrix's summary (scripts/test-matrix): one row per run, from the JUnit report
nextest wrote in target/matrix/RUN/junit.xml and the run's meta file. A test that passed but
printed a line starting with "skipped:" is counted as skipped, with its reason listed below.

    python3 summary.py [--run-id ID] MATRIX_DIR RUN...

With --run-id, a run counts only if its directory was stamped with that id (target/matrix/RUN/
run_id, written when the run started from an empty directory): a run that stopped before its
report shows as "did not run" with the reason it left (RUN/why), never with an earlier run's
results. Exits 1 if any test failed or any run did not run.
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


def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def main():
    args = sys.argv[1:]
    run_id = None
    if args[:1] == ["--run-id"]:
        run_id, args = args[1], args[2:]
    matrix, runs = args[0], args[1:]
    rows, notes, failures = [], [], []
    did_not_run = 0
    for run in runs:
        info = meta(os.path.join(matrix, run, "meta"))
        report = os.path.join(matrix, run, "junit.xml")
        passed = failed = skipped = 0
        stamped = run_id is None or read(os.path.join(matrix, run, "run_id")) == run_id
        why = read(os.path.join(matrix, run, "why"))
        if not stamped or not os.path.exists(report) or why is not None:
            reason = why or ("no report of this run" if stamped else "not run this time")
            failures.append(f"{run}: did not run: {reason}")
            did_not_run += 1
            rows.append((info.get("nginx", "?") if stamped else "?",
                         info.get("distribution", "?") if stamped else "?",
                         info.get("tomcat", "?") if stamped else "?",
                         info.get("jetty", "-") if stamped else "?",
                         run, "-", "-", "did not run", "-"))
            continue
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
        started = read(os.path.join(matrix, run, "started"))
        wall = "?"
        if started and started.isdigit():
            seconds = max(0, int(os.path.getmtime(report)) - int(started))
            wall = f"{seconds // 60} min {seconds % 60:02d} s"
        rows.append((info.get("nginx", "?"), info.get("distribution", "?"),
                     info.get("tomcat", "?"), info.get("jetty", "-"), run, passed, failed, skipped,
                     wall))

    header = ("nginx", "distribution", "Tomcat", "Jetty", "run", "passed", "failed", "skipped", "time")
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
        print("  ".join(c.ljust(w) if j < 5 else c.rjust(w)
                        for j, (c, w) in enumerate(zip(row, widths))).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    counted = [r for r in rows if r[7] != "did not run"]
    total_passed = sum(r[5] for r in counted)
    total_failed = sum(r[6] for r in counted)
    total_skipped = sum(r[7] for r in counted)
    empty = sum(1 for r in counted if r[5] == 0 and r[6] == 0)
    print(f"\nversion matrix: {len(rows)} runs, {did_not_run} did not run, "
          f"{empty} ran no test")
    # The closing line, in the form test tools read: what ran, nothing more.
    print(f"{total_passed} passed, {total_failed + did_not_run + empty} failed, "
          f"{total_skipped} skipped")
    return 0 if total_failed + did_not_run + empty == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

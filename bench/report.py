#!/usr/bin/env python3
"""bench/report.py RAW_DIR OUT_DIR — turn the raw figures of bench/isolation.sh into OUT_DIR/results.md (medians,
ratios to the baseline, spreads, the pipelined read, the 90 % tenant's report and its plans, client scaling with the
usage lock's waits, the goals, the set_tenant() cost, the plans) and OUT_DIR/results.png (the ratios per workload and
variant; tps per client count). Ratios are medians of per-round ratios: each round runs every variant back to back."""

import csv
import math
import statistics
import sys
from pathlib import Path

VARIANTS = ["a", "b1", "b2", "c", "d"]
VARIANT_NAMES = {
    "a": "a: no RLS, `WHERE tenant_id = $1` (baseline)",
    "b1": "b1: policy `tenant_id = current_setting(...)::uuid`",
    "b2": "b2: policy `tenant_id = (SELECT current_setting(...)::uuid)`",
    "c": "c: nile_tenancy, usage tracking off",
    "d": "d: nile_tenancy, usage tracking on",
}
# workload -> (description, unit, higher is better); pipelined runs a, b2, c and d, scan90 a, b2 and c
WORKLOADS = {
    "point": ("point read by key, one tenant per connection", "tps", True),
    "range": ("range read of 20 rows, one tenant per connection", "tps", True),
    "insert": ("insert one row", "tps", True),
    "update": ("update one row by key", "tps", True),
    "mixed": ("80 % point read, 15 % update, 5 % insert", "tps", True),
    "switching": ("point read, a random tenant of all in every transaction", "tps", True),
    "zipf": ("point read, tenants drawn from a Zipf distribution (s = 1.1); tenant 1 holds 30 % of the rows", "tps", True),
    "pipelined": ("point read as one round trip (the four statements in one pipeline)", "tps", True),
    "scan": ("report over all of tenant 1's rows (30 % of the table), one client", "ms per report", False),
    "scan90": ("report over all of tenant 1's rows in a table where it holds 90 %, one client", "ms per report", False),
    "noisy": ("p99 latency of point reads beside one client scanning tenant 1 in a loop", "ms p99", False),
}


def read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def read_interleaved(path):
    """The interleaved runs' mean latencies: (workload, measure, variant) -> {round: µs}. A round in which pgbench
    chose none of a variant's transactions (the one-client reports run few per round) has no figure for it (its
    `-nan` is left out), and the ratios skip that round."""
    interleaved = {}
    for row in read_tsv(path):
        mean_us = float(row["mean_us"])
        if math.isnan(mean_us):
            continue
        interleaved.setdefault((row["workload"], row["measure"], row["variant"]), {})[int(row["round"])] = mean_us
    return interleaved


def fmt(x, digits=3):
    return f"{x:.{digits}f}"


def count(x):
    return f"{int(x):,}".replace(",", " ")


def big(x):
    return f"{x:,.0f}".replace(",", " ") if x >= 100 else f"{x:.2f}"


def percent(x):
    return f"{100 * x:.2f} %"


# Client scaling: the issue's goals. The usage store's LWLock, as pg_stat_activity names it.
USAGE_LOCK = "LWLock:nile_tenancy usage"
SCALING_VARIANTS = ["a", "b2", "c", "d"]


def main(raw_dir, out_dir):
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    meta = dict(line.split("=", 1) for line in (raw_dir / "meta.env").read_text().splitlines() if "=" in line)
    values = {}  # (workload, variant) -> {round: value}
    for row in read_tsv(raw_dir / "raw.tsv"):
        value = float(row["value"])
        if row["workload"] in ("scan", "scan90"):
            value = 1000.0 / value  # reports per second -> ms per report
        values.setdefault((row["workload"], row["variant"]), {})[int(row["round"])] = value
    workloads = [w for w in WORKLOADS if (w, "a") in values]
    # Interleaved runs: (workload, measure, variant) -> {round: mean latency in µs}
    il_path = raw_dir / "interleaved.tsv"
    interleaved = read_interleaved(il_path) if il_path.exists() else {}

    def interleaved_ratios(w, v, base="a"):
        """Per-round speed of v relative to base, from mean latencies. d is d_on (nile with tracking on, entering with
        set_tenant() and set_config('nile.track_usage', 'on', true)), compared with a statement of its shape: against
        c it is d_on against c_off, against a and b2 against a_off and b2_off (their enter statement has the same
        second call, leaving tracking off), where the run has them."""
        if v == "d":
            v = "d_on"
            if base == "c":
                base = "c_off"
            elif base in ("a", "b2") and (w, "mix", base + "_off") in interleaved:
                base = base + "_off"
        a, b = interleaved.get((w, "mix", base), {}), interleaved.get((w, "mix", v), {})
        return [a[r] / b[r] for r in sorted(a) if r in b]

    def speed_ratios(w, v, base="a"):
        """Per-round speed of v relative to base: above 1 means v is faster; empty if either did not run."""
        higher = WORKLOADS[w][2]
        a, b = values.get((w, base), {}), values.get((w, v), {})
        return [(b[r] / a[r]) if higher else (a[r] / b[r]) for r in sorted(a) if r in b]

    def ratio_cell(rs):
        if not rs:
            return "–"
        return f"**{fmt(statistics.median(rs))}** ({fmt(min(rs), 2)}–{fmt(max(rs), 2)})"

    lines = []
    add = lines.append
    quick = " (BENCH_QUICK=1: a small dataset and short runs; for a quick check, not for quoting)" if meta.get("quick") else ""
    add("# nile_tenancy benchmark results")
    add("")
    add(f"Generated by `make bench`{quick}. PostgreSQL {meta['postgres']}, {meta['cpu']}, {meta['cores']} cores, "
        f"{meta['memory_gib']} GiB; {count(meta['tenants'])} tenants, {count(meta['rows'])} rows per table (tenant 1: "
        f"{count(meta['big_rows'])}, the others {meta['small_rows']} each); {meta['clients']} clients; "
        f"{meta['rounds']} rounds × {meta['seconds']} s per variant and workload, variants alternating in ABBA order; "
        f"about {meta['minutes']} minutes in all.")
    if "big90_rows" in meta:
        add("")
        add(f"scan90 runs on a second dataset: {count(meta['big90_rows'])} rows per table, of which tenant 1 holds "
            f"{count(meta['big90_big'])} (90 %) and {int(meta['big90_tenants']) - 1} other tenants "
            f"{count(meta['big90_small'])} each. "
            + (f"Client scaling: {meta['scaling_workloads']} with {meta['scaling_clients']} clients, "
               f"{meta['scaling_rounds']} rounds × {meta['seconds']} s." if meta.get("scaling_clients")
               else "Client scaling: not run."))
    add("")
    add("Variants:")
    for v in VARIANTS:
        add(f"- {VARIANT_NAMES[v]}")
    add("")
    add("## Speed relative to the baseline (a)")
    add("")
    add("Median of the per-round ratios, with their range; above 1 is faster than (a). For throughput that is "
        "tps / tps of (a); for the report and the p99 latency it is the time of (a) / the time of the variant.")
    add("")
    add("| workload | b1 / a | b2 / a | c / a | d / a | d / b2 | d / c |")
    add("| --- | --- | --- | --- | --- | --- | --- |")
    for w in workloads:
        cells = [ratio_cell(speed_ratios(w, v)) for v in ["b1", "b2", "c", "d"]]
        cells.append(ratio_cell(speed_ratios(w, "d", base="b2")))
        cells.append(ratio_cell(speed_ratios(w, "d", base="c")))
        add(f"| {w} | " + " | ".join(cells) + " |")
    add("")
    il_workloads = [w for w in workloads if interleaved_ratios(w, "c")]
    if il_workloads:
        add("## Interleaved: the same comparison without the machine's drift")
        add("")
        add("On this machine the speed moves by ±10–20 % from one run to the next, more than the differences the goals "
            "are about. So every workload but noisy is also measured interleaved: all variants run in the same "
            "connections, pgbench choosing one of their scripts at random for every transaction, so that all meet "
            "the same machine at the same moments. In these runs d is nile with tracking on, and c and d enter "
            "the tenant with `SELECT nile.set_tenant(…), set_config('nile.track_usage', 'off' | 'on', true)` (the "
            "same statement but for the tracking; d / c compares these two). d / a and d / b2 compare the second "
            "with a and b2 entering the same way, `SELECT set_config('app.tenant_id', …), "
            "set_config('nile.track_usage', 'off', true)` (tracking stays off for them), where the run has them. "
            "The figure is the mean latency per transaction from pgbench's per-transaction "
            "log; the ratio is the time of the reference / the time of the variant (above 1 is faster), median over "
            "the interleaved rounds, with their range.")
        add("")
        add("| workload | b1 / a | b2 / a | c / a | d / a | d / b2 | d / c | mean latency a / c, µs |")
        add("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for w in il_workloads:
            cells = [ratio_cell(interleaved_ratios(w, v)) for v in ["b1", "b2", "c", "d"]]
            cells.append(ratio_cell(interleaved_ratios(w, "d", base="b2")))
            cells.append(ratio_cell(interleaved_ratios(w, "d", base="c")))
            lat = lambda v: statistics.median(interleaved[(w, "mix", v)].values())
            cells.append(f"{big(lat('a'))} / {big(lat('c'))}")
            add(f"| {w} | " + " | ".join(cells) + " |")
        add("")
    add("## Medians")
    add("")
    add("Median of the rounds, and the spread of the rounds ((max − min) / median).")
    add("")
    add("| workload | what | unit | " + " | ".join(VARIANTS) + " |")
    add("| --- | --- | --- | " + " | ".join("---" for _ in VARIANTS) + " |")
    for w in workloads:
        desc, unit, _ = WORKLOADS[w]
        cells = []
        for v in VARIANTS:
            xs = list(values.get((w, v), {}).values())
            if not xs:
                cells.append("–")
                continue
            m = statistics.median(xs)
            cells.append(f"{big(m)} ±{100 * (max(xs) - min(xs)) / m / 2:.1f} %")
        add(f"| {w} | {desc} | {unit} | " + " | ".join(cells) + " |")
    add("")

    def median_of(w, v):
        xs = list(values.get((w, v), {}).values())
        return statistics.median(xs) if xs else None

    if "pipelined" in workloads:
        add("## The point read in one round trip (pipelined)")
        add("")
        add("The point read's four statements (`BEGIN`, entering the tenant, the read, `COMMIT`) sent in one pgbench "
            "pipeline (`\\startpipeline` … `\\endpipeline`, -M prepared): one round trip instead of four, so the "
            "server's own work is a larger share of each transaction. Median tps of the rounds; the ratios are those "
            "of the tables above (interleaved: d is d_on).")
        add("")
        add("| variant | point, tps | pipelined, tps | pipelined / point | pipelined / a, run by run | "
            "pipelined / a, interleaved |")
        add("| --- | --- | --- | --- | --- | --- |")
        for v in ["a", "b2", "c", "d"]:
            p, q = median_of("point", v), median_of("pipelined", v)
            if q is None:
                continue
            gain = fmt(q / p) if p else "–"
            cells = [big(p) if p else "–", big(q), gain,
                     ratio_cell(speed_ratios("pipelined", v)) if v != "a" else "1",
                     ratio_cell(interleaved_ratios("pipelined", v)) if v != "a" else "1"]
            add(f"| {VARIANT_NAMES[v].split(':')[0]} | " + " | ".join(cells) + " |")
        add("")

    plans90 = raw_dir / "plans90.txt"
    if "scan90" in workloads:
        add("## A report over a tenant that holds 90 % of the table (scan90)")
        add("")
        add(f"The report `SELECT count(*), sum(length(payload)), sum(balance)` over all of tenant 1's rows in the "
            f"second dataset ({count(meta.get('big90_big', 0))} of {count(meta.get('big90_rows', 0))} rows), one "
            "client, -M prepared. Variant a names the tenant as a literal (`WHERE tenant_id = bench.tid(1)`), so "
            "it gets the plan of a literal, whatever the plan cache decides for a parameter; b2 and c see the "
            "tenant only through their policy. Time per report, medians of the rounds; ratios: time of a / time of "
            "the variant (above 1 is faster).")
        add("")
        add("| variant | ms per report | a / variant, run by run | a / variant, interleaved |")
        add("| --- | --- | --- | --- |")
        for v in ["a", "b2", "c"]:
            m = median_of("scan90", v)
            if m is None:
                continue
            cells = [big(m), ratio_cell(speed_ratios("scan90", v)) if v != "a" else "1",
                     ratio_cell(interleaved_ratios("scan90", v)) if v != "a" else "1"]
            add(f"| {VARIANT_NAMES[v].split(':')[0]} | " + " | ".join(cells) + " |")
        add("")
        if plans90.exists():
            add("The plans, `EXPLAIN (COSTS OFF)` in each variant's context for tenant 1:")
            add("")
            add("```")
            lines.extend(plans90.read_text().rstrip().splitlines())
            add("```")
            add("")

    scaling = scaling_figures(raw_dir, meta.get("slice_ms"))
    if scaling:
        add_scaling(add, scaling, meta)

    st_path = raw_dir / "set_tenant.tsv"
    st = read_tsv(st_path) if st_path.exists() else []

    def med(measure, kind):
        return statistics.median(float(r["value"]) for r in st if r["measure"] == measure and r["kind"] == kind)

    goals, earlier = [], []

    def judge(rs, threshold, higher, show):
        if not rs:
            return "–", None
        m = statistics.median(rs)
        return show(m), (m >= threshold if higher else m <= threshold)

    def goal(text, run_by_run, interleaved_rs, threshold, higher=True, into=goals, show=fmt):
        a_text, a_ok = judge(run_by_run, threshold, higher, show)
        b_text, b_ok = judge(interleaved_rs, threshold, higher, show)
        decisive = b_ok if b_ok is not None else a_ok
        if decisive is None:
            return
        into.append(f"| {text} | {a_text} | {b_text} | {'met' if decisive else '**missed**'} |")

    def inverse(rs):
        return [1 / r for r in rs]

    # Issue 21: nile with tracking on (d) against b2 and a; in the interleaved runs d is d_on, measured in the same
    # connections as a and b2.
    for w in ["point", "range", "insert", "update", "mixed", "switching", "zipf"]:
        if w in workloads:
            goal(f"d ≥ 1.00 × b2 on {w}", speed_ratios(w, "d", base="b2"), interleaved_ratios(w, "d", base="b2"),
                 1.0)
    for w in ["point", "range", "mixed", "switching", "zipf", "insert", "update"]:
        if w in workloads:
            least = 0.97 if w in ("insert", "update") else 0.98
            goal(f"d ≥ {least:.2f} × a on {w}", speed_ratios(w, "d"), interleaved_ratios(w, "d"), least)
    for w in ["scan", "scan90"]:
        if w in workloads:
            goal(f"{w}: time of c ≤ 1.05 × time of a", inverse(speed_ratios(w, "c")),
                 inverse(interleaved_ratios(w, "c")), 1.05, higher=False)
    if st:  # as in the table below: the median with the call minus the median without
        goal("`nile.set_tenant()` ≤ 0.6 µs per call, server side",
             [med("per_call", "set_tenant") - med("per_call", "nothing")], [], 0.6, higher=False,
             show=lambda x: f"{x:.2f} µs")
    for (w, c), fig in scaling.items() if scaling else []:
        goal(f"tracking on / off ≥ 0.97 at {c} clients ({w}; interleaved: time-sliced)", fig["onoff_run"],
             fig["onoff_sliced"], 0.97)
    for (w, c), fig in scaling.items() if scaling else []:
        if fig["lock_d"] is not None:
            goal(f"usage-lock waits ≤ 0.5 % of the active backends' samples at {c} clients ({w}, d)",
                 [fig["lock_d"]], [], 0.005, higher=False, show=percent)
    # The goals before issue 21.
    for w in ["point", "range", "switching"]:
        if w in workloads:
            goal(f"c ≥ 0.97 × a on {w}", speed_ratios(w, "c"), interleaved_ratios(w, "c"), 0.97, into=earlier)
    for w in workloads:
        for b in ["b1", "b2"]:
            goal(f"c at least as fast as {b} on {w} (c / {b})", speed_ratios(w, "c", base=b),
                 interleaved_ratios(w, "c", base=b), 1.0, into=earlier)
    for w in workloads:
        goal(f"d ≥ 0.97 × c on {w}", speed_ratios(w, "d", base="c"), interleaved_ratios(w, "d", base="c"), 0.97,
             into=earlier)
    add("## Goals")
    add("")
    add("Medians of the per-round ratios, run by run and interleaved; a goal is judged on the interleaved figure "
        "where there is one (the run-by-run figure moves with the machine). Times are inverted into speeds for the "
        "ratios above, and back into times here (scan, scan90: the time of c / the time of a). At 16 to 64 clients "
        "the interleaved figure of tracking on / off is the time-sliced one (see Client scaling); the usage-lock "
        "waits are those sampled in the runs of d, where every transaction is tracked.")
    add("")
    add("Issue 21:")
    add("")
    add("| goal | run by run | interleaved | |")
    add("| --- | --- | --- | --- |")
    lines.extend(goals)
    add("")
    add("Earlier goals:")
    add("")
    add("| goal | run by run | interleaved | |")
    add("| --- | --- | --- | --- |")
    lines.extend(earlier)
    add("")

    if st:
        add("## The cost of entering a tenant")
        add("")
        nothing, cfg, ten = med("per_call", "nothing"), med("per_call", "set_config"), med("per_call", "set_tenant")
        add(f"Server side, per call: a PL/pgSQL loop of {count(meta['loop_calls'])} calls in one transaction, cycling "
            "through every tenant, minus the same loop without the call (medians of the rounds):")
        add("")
        add("| call | µs per call |")
        add("| --- | --- |")
        add(f"| `set_config('app.tenant_id', id, true)` (what `SET LOCAL` does) | {cfg - nothing:.2f} |")
        add(f"| `nile.set_tenant(id)` | {ten - nothing:.2f} |")
        add("")
        rt0, rt1, rt2 = med("round_trip", "nothing"), med("round_trip", "set_local"), med("round_trip", "set_tenant")
        add("Per round trip: pgbench (one client, -M prepared) `BEGIN; <statement>; COMMIT;`, minus `BEGIN; COMMIT;`:")
        add("")
        add("| statement | µs per transaction added |")
        add("| --- | --- |")
        add(f"| `SET LOCAL app.tenant_id = '…'` | {rt1 - rt0:.1f} |")
        add(f"| `SELECT nile.set_tenant('…')` | {rt2 - rt0:.1f} |")
        add(f"| (`BEGIN; COMMIT;` alone) | {rt0:.1f} |")
        add("")

    plans = raw_dir / "plans.txt"
    if plans.exists():
        add("## Plans")
        add("")
        add("<details><summary>EXPLAIN of the point read and the report under each variant</summary>")
        add("")
        add("What psql plans for tenant 1 and key 42. In pgbench (-M prepared), a's statements carry the tenant as "
            "a parameter, and after five executions the plan cache keeps the generic plan, planned for an average "
            "tenant: for the report over tenant 1, an index scan, not the sequential scan planned here for the "
            "literal (scan90's a names the tenant as a literal in pgbench too).")
        add("")
        add("```")
        lines.extend(plans.read_text().rstrip().splitlines())
        add("```")
        add("</details>")
        add("")
    add("Rerun with `make bench` (or `BENCH_QUICK=1 make bench`); see docs/performance.md.")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    chart(workloads, speed_ratios, meta, scaling, out_dir / "results.png")


def scaling_figures(raw_dir, slice_ms):
    """(workload, clients) -> the client-scaling figures: per variant the median tps and p99 of the runs by run,
    the per-round ratios tracking on / off (run by run d / c, mixed d_on / c_off from mean latencies, time-sliced
    from throughput), and the sampled wait events."""
    path = raw_dir / "scaling.tsv"
    if not path.exists():
        return {}
    runs = {}  # (workload, clients, kind, variant) -> {round: row}
    for row in read_tsv(path):
        key = (row["workload"], int(row["clients"]), row["kind"], row["variant"])
        runs.setdefault(key, {})[int(row["round"])] = row
    waits = {}  # (workload, clients, kind, variant) -> {(state, wait): samples}, over the rounds
    wpath = raw_dir / "waits.tsv"
    for row in read_tsv(wpath) if wpath.exists() else []:
        into = waits.setdefault((row["workload"], int(row["clients"]), row["kind"], row["variant"]), {})
        into[(row["state"], row["wait"])] = into.get((row["state"], row["wait"]), 0) + int(row["samples"])

    def per_round(key_on, key_off, field, on_over_off):
        on, off = runs.get(key_on, {}), runs.get(key_off, {})
        out = []
        for r in sorted(on):
            if r in off:
                x, y = float(on[r][field]), float(off[r][field])
                out.append(x / y if on_over_off else y / x)
        return out

    def sampled(key):
        """The sampled waits of the active backends: the usage lock's share, running's share, the top three others
        (shares of the active samples), the number of active samples, and the active share of all samples."""
        w = waits.get(key, {})
        active = {e: n for (state, e), n in w.items() if state == "active"}
        total = sum(active.values())
        every = sum(n for (state, _), n in w.items() if state != "-")
        if not total:
            return {"lock": None, "running": None, "top": [], "active": 0, "active_share": None}
        others = sorted(((n, e) for e, n in active.items() if e not in (USAGE_LOCK, "running")), reverse=True)[:3]
        return {"lock": active.get(USAGE_LOCK, 0) / total, "running": active.get("running", 0) / total,
                "top": [(e, n / total) for n, e in others], "active": total, "active_share": total / every}

    figures = {}
    order = [w for w in WORKLOADS if any(k[0] == w for k in runs)]
    for w, c in sorted({(k[0], k[1]) for k in runs}, key=lambda wc: (order.index(wc[0]), wc[1])):
        fig = {"tps": {}, "p99": {}}
        for v in SCALING_VARIANTS:
            rows = runs.get((w, c, "run", v), {})
            if rows:
                fig["tps"][v] = statistics.median(float(x["tps"]) for x in rows.values())
                fig["p99"][v] = statistics.median(float(x["p99_ms"]) for x in rows.values())
        fig["onoff_run"] = per_round((w, c, "run", "d"), (w, c, "run", "c"), "tps", True)
        fig["onoff_mix"] = per_round((w, c, "mix", "d_on"), (w, c, "mix", "c_off"), "mean_us", False)
        fig["onoff_sliced"] = per_round((w, c, "sliced", "d_on"), (w, c, "sliced", "c_off"), "tps", True)
        fig["sliced_tps"] = {v: statistics.median(float(x["tps"]) for x in runs[(w, c, "sliced", v)].values())
                             for v in ("c_off", "d_on") if (w, c, "sliced", v) in runs}
        fig["d"] = sampled((w, c, "run", "d"))
        fig["lock_d"] = fig["d"]["lock"]
        fig["lock_sliced"] = sampled((w, c, "sliced", "d_on"))["lock"]
        fig["lock_c"] = sampled((w, c, "run", "c"))["lock"]
        # How long a transaction takes against the slice: the share of a slice's work that is still the previous one's
        mean = [float(x["mean_us"]) for v in ("c_off", "d_on") for x in runs.get((w, c, "sliced", v), {}).values()]
        fig["smear"] = statistics.median(mean) / 1000 / float(slice_ms) if mean and slice_ms else None
        figures[(w, c)] = fig
    return figures


def add_scaling(add, scaling, meta):
    def cell(rs):
        if not rs:
            return "–"
        return f"**{fmt(statistics.median(rs))}** ({fmt(min(rs), 2)}–{fmt(max(rs), 2)})"

    def opt(x, show):
        return "–" if x is None else show(x)

    add("## Client scaling")
    add("")
    add(f"The same transactions with many clients on {meta['cores']} cores (pgbench `-c N -j {meta['cores']}`, at "
        "most one thread per core), a tenant of their own per connection as in the tables above, in "
        f"{meta['scaling_rounds']} rounds of {meta['seconds']} s. Run by run, a, b2, c and d alternate in ABBA "
        "order; tps is pgbench's, the p99 latency comes from its per-transaction log. Medians of the rounds.")
    add("")
    add("| workload | clients | tps a | tps b2 | tps c | tps d | p99 a, ms | p99 b2 | p99 c | p99 d |")
    add("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (w, c), fig in scaling.items():
        cells = [opt(fig["tps"].get(v), big) for v in SCALING_VARIANTS]
        cells += [opt(fig["p99"].get(v), lambda x: f"{x:.2f}") for v in SCALING_VARIANTS]
        add(f"| {w} | {c} | " + " | ".join(cells) + " |")
    add("")
    add("Usage tracking on / off. With this many clients the CPU is saturated and a transaction spends most of its "
        "time waiting for a CPU, which all variants share: mixed transaction by transaction in the same "
        "connections (d_on / c_off from their mean latencies, as in the interleaved table above), tracking's cost "
        "shows only in part. So c and d are also **time-sliced**: one script, whose statement entering the tenant "
        "turns tracking off or on by the server's clock, off in even slices of "
        f"{meta.get('slice_ms', '100')} ms and on in odd ones, so that every client runs the same variant at the "
        "same moment; a transaction counts for the slice it started in, whole slices only, as many of each: the "
        "ratio of the two throughputs carries all of tracking's cost, and the slices alternate too fast for the "
        "machine's drift to favour either. The goal is judged on it; the sliced runs last twice as long as the "
        "others. A transaction still running when its slice ends spills its work into the next one: the "
        "smear column is the mean transaction time / the slice: at most that share of the difference is lost "
        "that way (the ratio is at most that much closer to 1 than the cost). Medians of the per-round ratios, "
        "with their range.")
    add("")
    add("| workload | clients | on / off, time-sliced | smear | on / off, run by run (d / c) | "
        "on / off, mixed (d_on / c_off) | tps off / on, time-sliced |")
    add("| --- | --- | --- | --- | --- | --- | --- |")
    for (w, c), fig in scaling.items():
        tps = fig["sliced_tps"]
        cells = [cell(fig["onoff_sliced"]), opt(fig["smear"], percent), cell(fig["onoff_run"]),
                 cell(fig["onoff_mix"]),
                 f"{big(tps['c_off'])} / {big(tps['d_on'])}" if "c_off" in tps and "d_on" in tps else "–"]
        add(f"| {w} | {c} | " + " | ".join(cells) + " |")
    add("")
    add(f"Wait events: during every run a sampler reads `pg_stat_activity` every {meta.get('sample_ms', '10')} ms and "
        "counts the pgbench backends by state and wait event. Usage-lock waits are the samples of active backends "
        "waiting on the LWLock `nile_tenancy usage` (the usage store's), over all samples of active backends: in "
        "the runs of d (every transaction tracked; the goal's figure), in the tracked slices, and in the runs of c "
        "(no tracking: 0 expected). An active backend with no wait event is on a CPU or waiting for one "
        "(running). Most samples find a backend idle in its transaction, waiting for pgbench's next statement (or "
        "for a CPU to read it): the last column is the share of the samples that found a backend active.")
    add("")
    add("| workload | clients | usage-lock waits: d | tracked slices | c | active samples (d) | "
        "running (d) | top other waits of the active (d) | active / all samples (d) |")
    add("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (w, c), fig in scaling.items():
        d = fig["d"]
        top = ", ".join(f"{e} {percent(x)}" for e, x in d["top"]) or "–"
        cells = [opt(fig["lock_d"], percent), opt(fig["lock_sliced"], percent), opt(fig["lock_c"], percent),
                 count(d["active"]), opt(d["running"], percent), top, opt(d["active_share"], percent)]
        add(f"| {w} | {c} | " + " | ".join(cells) + " |")
    add("")


def chart(workloads, speed_ratios, meta, scaling, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ["b1", "b2", "c", "d"]
    colours = {"a": "#666666", "b1": "#d95f02", "b2": "#e6ab02", "c": "#1b9e77", "d": "#7570b3"}
    if scaling:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(16, 5.5), dpi=110, gridspec_kw={"width_ratios": [3, 1]})
    else:
        fig, ax = plt.subplots(figsize=(12, 5.5), dpi=110)
    width = 0.2
    for i, v in enumerate(shown):
        xs, meds, lows, highs = [], [], [], []
        for j, w in enumerate(workloads):
            rs = speed_ratios(w, v)
            if not rs:
                continue
            m = statistics.median(rs)
            xs.append(j + (i - 1.5) * width)
            meds.append(m)
            lows.append(m - min(rs))
            highs.append(max(rs) - m)
        ax.bar(xs, meds, width, label=VARIANT_NAMES[v].replace("`", ""), color=colours[v], yerr=[lows, highs],
               capsize=2, error_kw={"elinewidth": 0.8})
        for x, m in zip(xs, meds):
            ax.text(x, m + 0.01, f"{m:.2f}", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(0.97, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels(workloads)
    ax.set_ylabel("speed relative to (a), median of per-round ratios")
    ax.set_ylim(0, max(1.25, ax.get_ylim()[1]))
    ax.set_title(f"nile_tenancy vs hand-written isolation — PostgreSQL {meta['postgres']}, {meta['cores']} cores, "
                 f"{int(meta['tenants'])} tenants, {int(meta['rows'])} rows" + (" (quick)" if meta.get("quick") else ""),
                 fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    if scaling:
        for w, style in zip(sorted({w for w, _ in scaling}), ["-", "--", ":"]):
            counts = sorted(c for v, c in scaling if v == w)
            for v in SCALING_VARIANTS:
                ys = [scaling[(w, c)]["tps"].get(v) for c in counts]
                if all(y is not None for y in ys):
                    ax2.plot(counts, ys, style, marker="o", color=colours[v], label=f"{v} {w}")
            for c in counts:
                rs = scaling[(w, c)]["onoff_sliced"]
                if rs:
                    y = scaling[(w, c)]["tps"].get("d") or 0
                    ax2.annotate(f"on/off {statistics.median(rs):.3f}", (c, y), fontsize=6,
                                 textcoords="offset points", xytext=(0, -12 if style == "-" else 8), ha="center")
        ax2.set_xscale("log", base=2)
        ax2.set_xticks(sorted({c for _, c in scaling}))
        ax2.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax2.set_xlabel("clients")
        ax2.set_ylabel("tps, median of the runs by run")
        ax2.set_ylim(0, ax2.get_ylim()[1] * 1.1)
        ax2.set_title("client scaling (on/off: tracking, time-sliced)", fontsize=9)
        ax2.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

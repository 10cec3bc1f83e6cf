#!/usr/bin/env python3
"""Turn scripts/bench's results into docs/BENCHMARKS.md, gnuplot data and PNG plots.

    report.py --line RUN.json MANIFEST     one progress line for a finished run
    report.py --doc DOCS [--elapsed S]     DOCS/BENCHMARKS.md and DOCS/bench-*.png

Inputs (all under DOCS/bench-results/): machine.json (the machine), manifest.jsonl
(one line per run: scenario, variant, run index, wall time, CPU ticks of the whole
machine / the servers / the bench, Redis reconnects and bridge drops during the
run), NAME.json (the bench's own report for run NAME), callgrind-*.txt,
instructions.tsv. Python 3 standard library only; gnuplot for the plots.
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------
# Loading

def load_manifest(path):
    runs = []
    if os.path.exists(path):
        for line in open(path):
            line = line.strip()
            if line:
                runs.append(json.loads(line))
    return runs


def attach(runs, res):
    """Each manifest entry gets 'r' = the bench's JSON report (or None)."""
    for m in runs:
        path = os.path.join(res, m["name"] + ".json")
        m["r"] = None
        if os.path.exists(path):
            try:
                m["r"] = json.load(open(path))
            except ValueError:
                pass
        wall = m.get("wall_s") or 0
        tck = m.get("clk_tck") or 100
        if wall and "cpu_ticks_machine" in m:
            other = m["cpu_ticks_machine"] - m["cpu_ticks_servers"] - m["cpu_ticks_bench"]
            m["other_cores"] = max(other, 0) / tck / wall
            m["server_cores"] = m["cpu_ticks_servers"] / tck / wall
            m["bench_cores"] = m["cpu_ticks_bench"] / tck / wall
    return runs


def get(r, path, default=None):
    cur = r
    for key in path.split("."):
        if not isinstance(cur, dict) or key not in cur:
            return default
        cur = cur[key]
    return cur


# ---------------------------------------------------------------------------
# Formatting

def fnum(v, digits=0):
    if v is None:
        return "–"
    if isinstance(v, float) and digits:
        return f"{v:,.{digits}f}"
    return f"{round(v):,}"


def fms(v):
    if v is None:
        return "–"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fbytes(v):
    if v is None:
        return "–"
    if abs(v) < 128:
        return "≈ 0 B" if abs(v) >= 0.5 else "0 B"
    if abs(v) >= 10 * 1024:
        return f"{v / 1024:,.1f} KiB"
    return f"{v:,.0f} B"


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values, fmt):
    """'median (min–max)' over the runs, or the single value."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    m = statistics.median(values)
    if len(values) == 1:
        return fmt(m)
    lo, hi = min(values), max(values)
    if fmt(lo) == fmt(hi):
        return fmt(m)
    return f"{fmt(m)} ({fmt(lo)}–{fmt(hi)})"


def table(header, rows, align=None):
    out = ["| " + " | ".join(header) + " |"]
    align = align or (["---"] + ["---:"] * (len(header) - 1))
    out.append("| " + " | ".join(align) + " |")
    for row in rows:
        out.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(out)


def rate_key(v):
    return float("inf") if v == "max" else float(v)


def groups(runs, scenario):
    """{variant: [runs]} for a scenario, variants in numeric order."""
    out = {}
    for m in runs:
        if m.get("scenario") == scenario:
            out.setdefault(m["variant"], []).append(m)
    return dict(sorted(out.items(), key=lambda kv: rate_key(kv[0])))


def vals(ms, path):
    return [get(m["r"], path) for m in ms if m.get("r")]


# ---------------------------------------------------------------------------
# --line: progress output for one run

def line(report_path, manifest_path):
    runs = attach(load_manifest(manifest_path), os.path.dirname(report_path))
    name = os.path.basename(report_path)[:-5]
    m = next((x for x in reversed(runs) if x["name"] == name), None)
    if not m or not m.get("r"):
        print(f"  {name}: no report")
        return
    r = m["r"]
    parts = [f"sessions {get(r, 'sessions_established')}/{get(r, 'sessions_target')}",
             f"hs/s {fnum(get(r, 'handshakes_per_s'))}"]
    if get(r, "messages_published"):
        lat = get(r, "latency_ms", {})
        parts += [f"pub/s {fnum(get(r, 'publish_per_s'))}",
                  f"deliv/s {fnum(get(r, 'delivered_per_s'))}",
                  f"p50 {fms(lat.get('p50'))} p99 {fms(lat.get('p99'))} "
                  f"p999 {fms(lat.get('p999'))} max {fms(lat.get('max'))} ms",
                  f"loss {get(r, 'loss')}"]
    if get(r, "final_publish"):
        parts.append(f"final missing {get(r, 'final_publish.missing')}")
    if get(r, "memory.per_session_bytes") is not None:
        parts.append(f"{fnum(get(r, 'memory.per_session_bytes'))} B/session")
    if get(r, "slow_sessions"):
        parts.append(f"slow closed {get(r, 'slow_sessions_closed')}/{get(r, 'slow_sessions')}")
    if m.get("redis_reconnects"):
        parts.append(f"REDIS RECONNECTS {m['redis_reconnects']}")
    if m.get("other_cores", 0) > 0.15:
        parts.append(f"other load {m['other_cores']:.2f} cores")
    print(f"  {name}: " + ", ".join(parts) + f" [{m.get('wall_s', 0):.0f} s]")


# ---------------------------------------------------------------------------
# Plots

def gnuplot(script, workdir):
    if not shutil.which("gnuplot"):
        print("report: gnuplot missing, no plots", file=sys.stderr)
        return False
    r = subprocess.run(["gnuplot"], input=script, text=True, cwd=workdir,
                       capture_output=True)
    if r.returncode:
        print("report: gnuplot failed:\n" + r.stderr, file=sys.stderr)
        return False
    return True


PLOT_HEAD = """set terminal pngcairo size 900,520 font "DejaVu Sans,11"
set grid
set key top left
"""


def plot_s2(docs, s2, s5u):
    """p99 (and p50, p999) latency vs offered rate, per-user push."""
    rows = []
    for variant, ms in s2.items():
        if variant == "max":
            continue
        rows.append((float(variant), med(vals(ms, "latency_ms.p50")),
                     med(vals(ms, "latency_ms.p99")), med(vals(ms, "latency_ms.p999")),
                     min(v for v in vals(ms, "latency_ms.p99") if v is not None),
                     max(v for v in vals(ms, "latency_ms.p99") if v is not None),
                     med(vals(ms, "delivered_per_s"))))
    if not rows:
        return None
    data = os.path.join(docs, "bench-results", "s2-latency.dat")
    with open(data, "w") as f:
        f.write("# offered_msg_s p50_ms p99_ms p999_ms p99_min p99_max delivered_per_s\n")
        for row in rows:
            f.write(" ".join(f"{v:.4f}" for v in row) + "\n")
    mx = s2.get("max")
    extra = ""
    if mx:
        d = med(vals(mx, "delivered_per_s"))
        if d:
            extra = (f'set arrow from {d:.0f}, graph 0 to {d:.0f}, graph 1 nohead dt 2 lc "gray40"\n'
                     f'set label "peak with --rate max:\\n{d:,.0f}/s delivered" at {d:.0f}, graph 0.08 '
                     'right offset -0.5,0 tc "gray30"\n')
    users = get(next(iter(s2.values()))[0].get("r") or {}, "params.sessions", 0)
    xt = ", ".join(f'"{row[0] / 1000:.0f}k" {row[0]:.0f}' for row in rows)
    script = PLOT_HEAD + f"""set output "bench-p99-vs-rate.png"
set title "Per-user push, Redis -> client, {users:,} users (median of runs, bars: min-max of p99)"
set xlabel "offered rate (messages/s)"
set ylabel "latency (ms)"
set logscale y
set logscale x 2
set xtics ({xt})
set format x "%.0s%c"
set yrange [0.05:*]
set arrow from graph 0, first 5 to graph 1, first 5 nohead dt 3 lc "red"
set label "5 ms" at graph 0.01, first 5 offset 0,0.6 tc "red"
{extra}plot "bench-results/s2-latency.dat" using 1:3:5:6 with yerrorlines lw 2 pt 7 title "p99", \\
     "" using 1:2 with linespoints lw 1 pt 6 title "p50", \\
     "" using 1:4 with linespoints lw 1 pt 4 dt 2 title "p99.9"
"""
    return "bench-p99-vs-rate.png" if gnuplot(script, docs) else None


def plot_s3(docs, s3):
    rows = []
    for variant, ms in s3.items():
        rows.append((med(vals(ms, "publish_per_s")), med(vals(ms, "delivered_per_s")),
                     med(vals(ms, "latency_ms.p50")), med(vals(ms, "latency_ms.p99"))))
    rows = [r for r in rows if None not in r]
    if not rows:
        return None
    data = os.path.join(docs, "bench-results", "s3-broadcast.dat")
    with open(data, "w") as f:
        f.write("# published_msg_s deliveries_per_s p50_ms p99_ms\n")
        for row in sorted(rows):
            f.write(" ".join(f"{v:.4f}" for v in row) + "\n")
    subs = get(next(iter(s3.values()))[0].get("r") or {}, "params.sessions", 0)
    script = PLOT_HEAD + f"""set output "bench-broadcast.png"
set title "Broadcast to one channel of {subs:,} subscribers (median of runs)"
set xlabel "messages published per second (each to {subs:,} sessions)"
set logscale x 2
set ylabel "deliveries per second"
set y2label "latency (ms)"
set ytics nomirror
set y2tics
set logscale y2
set format y "%.1s%c"
plot "bench-results/s3-broadcast.dat" using 1:2 axes x1y1 with linespoints lw 2 pt 7 title "deliveries/s", \\
     "" using 1:4 axes x1y2 with linespoints lw 2 pt 5 title "p99 latency", \\
     "" using 1:3 axes x1y2 with linespoints lw 1 pt 4 dt 2 title "p50 latency"
"""
    return "bench-broadcast.png" if gnuplot(script, docs) else None


def plot_memory(docs, points):
    if not points:
        return None
    data = os.path.join(docs, "bench-results", "memory.dat")
    with open(data, "w") as f:
        f.write("# sessions delta_rss_per_session_B total_rss_per_session_B kernel_slab_per_session_B\n")
        for p in sorted(points, key=lambda p: p["sessions"]):
            f.write(f"{p['sessions']} {p['delta'] or 0:.1f} {p['total'] or 0:.1f} "
                    f"{p['slab'] or 0:.1f}\n")
    script = PLOT_HEAD + f"""set output "bench-memory.png"
set title "Memory per idle authenticated session (6 nodes, 1 worker each)"
set xlabel "sessions held"
set logscale x
set xrange [{min(p["sessions"] for p in points) * 0.8:.0f}:{max(p["sessions"] for p in points) * 1.25:.0f}]
set xtics (5000, 10000, 25000, 50000, 100000)
set ylabel "bytes per session"
set format x "%.0s%c"
set yrange [0:*]
set key top right
set arrow from graph 0, first 4096 to graph 1, first 4096 nohead dt 3 lc "dark-green"
set label "4 KiB target" at graph 0.01, first 4096 offset 0,0.6 tc "dark-green"
plot "bench-results/memory.dat" using 1:2 with linespoints lw 2 pt 7 title "user space: RSS growth / sessions", \\
     "" using 1:3 with linespoints lw 1 pt 6 title "user space: total node RSS / sessions", \\
     "" using 1:4 with linespoints lw 1 pt 4 dt 2 title "kernel slab growth / sessions (both socket ends)"
"""
    return "bench-memory.png" if gnuplot(script, docs) else None


# ---------------------------------------------------------------------------
# Callgrind

def callgrind_top(path, n=15):
    """[(Ir, percent, function, where)] from callgrind_annotate output, without the
    thread roots (clone, start_thread, czmq's actor trampoline: ~100 % each)."""
    rows = []
    if not os.path.exists(path):
        return rows
    started = False
    for raw in open(path, errors="replace"):
        s = raw.rstrip("\n")
        if "file:function" in s:
            started = True
            continue
        if not started:
            continue
        m = re.match(r"^\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(\S.*)$", s)
        if not m:
            continue
        ir = int(m.group(1).replace(",", ""))
        pct = float(m.group(2))
        if pct >= 99.9:
            continue
        where = m.group(3).strip()
        lib = ""
        lm = re.search(r"\s*\[([^\]]*)\]\s*$", where)
        if lm:
            lib = os.path.basename(lm.group(1))
            where = where[:lm.start()]
        file, _, func = where.rpartition(":")
        file = os.path.basename(file) if file and file != "???" else ""
        if not file or lib.startswith("lib"):
            file = lib if not file else f"{file} ({re.sub(r'[.]so.*$', '', lib)})"
        if any(r[2] == func and r[3] == file for r in rows):
            continue
        rows.append((ir, pct, func, file))
        if len(rows) >= n:
            break
    return rows


# ---------------------------------------------------------------------------
# The document

def doc(docs, elapsed):
    res = os.path.join(docs, "bench-results")
    mach = json.load(open(os.path.join(res, "machine.json")))
    runs = attach(load_manifest(os.path.join(res, "manifest.jsonl")), res)
    ncores = mach.get("nproc") or 2
    out = []
    w = out.append
    findings = []

    def note_run_problems(m):
        r = m.get("r")
        if r is None:
            findings.append(f"`{m['name']}`: no JSON report (bench exit status {m.get('rc')}).")
            return
        if m.get("rc"):
            findings.append(f"`{m['name']}`: bench exit status {m['rc']}.")
        if get(r, "handshake_failures"):
            findings.append(f"`{m['name']}`: {get(r, 'handshake_failures')} handshake failures "
                            f"({json.dumps(get(r, 'handshake_errors'))}).")
        nc = m.get("node_counters") or {}
        if get(r, "params.publish") and (get(r, "loss") or 0) > 0:
            where = ""
            if nc:
                where = (f"; the nodes counted {nc.get('deliver_drops', 0):,} messages dropped "
                         "because a session worker's queue was full "
                         "(`wsrouter_deliver_drops_total`)"
                         + (f" and {nc['queue_drops']} sessions closed for a full output queue"
                            if nc.get("queue_drops") else ""))
                unexplained = get(r, "loss") - nc.get("deliver_drops", 0)
                if get(r, "params.mode") == "user" and unexplained > 0:
                    where += f"; {unexplained:,} not accounted for by any node counter"
            findings.append(f"`{m['name']}`: {get(r, 'loss'):,} messages lost "
                            f"(published {get(r, 'messages_published'):,}, "
                            f"publish errors {get(r, 'publish_errors')}{where}).")
        elif nc.get("deliver_drops") or nc.get("queue_drops"):
            findings.append(f"`{m['name']}`: node counters: {json.dumps(nc)}.")
        for k in ("duplicates", "reordered", "misrouted", "protocol_errors"):
            if get(r, k):
                findings.append(f"`{m['name']}`: {k} = {get(r, k)}.")
        closed = (get(r, "sessions_closed_by_server") or 0)
        if closed:
            findings.append(f"`{m['name']}`: {closed} sessions closed by the server "
                            f"(close codes {json.dumps(get(r, 'close_codes'))}).")
        if get(r, "final_publish.missing"):
            findings.append(f"`{m['name']}`: final publish missed by "
                            f"{get(r, 'final_publish.missing'):,} sessions.")
        if get(r, "interrupted"):
            findings.append(f"`{m['name']}`: the run hit its time limit (interrupted).")
        if m.get("redis_reconnects"):
            findings.append(f"`{m['name']}`: the bridge reconnected to Redis "
                            f"{m['redis_reconnects']} time(s) during the run.")
        if m.get("bridge_deliver_drops"):
            findings.append(f"`{m['name']}`: bridge deliver drops {m['bridge_deliver_drops']}.")
        if m.get("servers_dead"):
            findings.append(f"`{m['name']}`: server process(es) {m['servers_dead']} died.")
        if m.get("other_cores", 0) > 0.15:
            findings.append(f"`{m['name']}`: other processes on the machine used "
                            f"{m['other_cores']:.2f} cores during the run (figures disturbed).")

    for m in runs:
        if m.get("scenario") != "s6":
            note_run_problems(m)

    commit = mach.get("commit")
    w("# wsrouter benchmarks\n")
    w(f"Written by `scripts/bench` on {mach.get('date')} at commit `{commit}`"
      + (f" in {elapsed // 60} min {elapsed % 60} s" if elapsed else "") + "."
      + (" **Quick mode (`--quick`): reduced parameters, one run each; not the standard "
         "figures.**" if mach.get("quick") else "")
      + " Everything below (tables, plots, the figures in the text) is regenerated by "
        "each run; raw JSON per run is in [bench-results/](bench-results/).\n")

    # --- collect headline numbers
    s1 = next((m for m in runs if m.get("scenario") == "s1"), None)
    mem = groups(runs, "mem")
    s2 = groups(runs, "s2")
    s3 = groups(runs, "s3")
    s4 = groups(runs, "s4")
    s5u = groups(runs, "s5-user")
    s5c = groups(runs, "s5-channel")
    s6 = next((m for m in runs if m.get("scenario") == "s6"), None)

    def mem_point(m):
        r = m.get("r")
        if not r:
            return None
        n = (get(r, "sessions_established") or 0) + (get(r, "slow_sessions_established") or 0)
        up = get(r, "memory.rss_up_kib")
        if not n or up is None:
            return None
        slab = None
        if m.get("slab_peak_kib") and m.get("slab_before_kib"):
            slab = (m["slab_peak_kib"] - m["slab_before_kib"]) * 1024 / n
        sb = get(r, "memory.sockstat_before.mem_pages")
        sa = get(r, "memory.sockstat_after.mem_pages")
        anon = None
        if m.get("nodes_anon_peak_kib") and m.get("nodes_anon_before_kib") is not None:
            anon = (m["nodes_anon_peak_kib"] - m["nodes_anon_before_kib"]) * 1024 / n
        return {"sessions": n, "delta": get(r, "memory.per_session_bytes"),
                "anon": anon, "file_before_kib": m.get("nodes_file_before_kib"),
                "anon_before_kib": m.get("nodes_anon_before_kib"),
                "total": up * 1024 / n, "rss_up_kib": up,
                "rss_start_kib": get(r, "memory.rss_start_kib"), "slab": slab,
                "sock_before": sb, "sock_after": sa,
                "sock_per": ((sa - sb) * 4096 / n) if sa is not None and sb is not None else None,
                "hs": get(r, "handshakes_per_s"), "name": m["name"]}

    mem_points = [p for p in (mem_point(ms[0]) for ms in mem.values()) if p]
    s1p = mem_point(s1) if s1 else None
    if s1p:
        mem_points.append(s1p)

    # S2 analysis. ok: p99 <= 5 ms and no loss in any run. sustained: no loss, delivered
    # >= 97 % of offered, p99 <= 100 ms (no backlog building up within the run). peak:
    # what --rate max moved (the publisher outruns the nodes: backlog, maybe drops).
    SUSTAINED_P99_MS = 100
    s2_ok_rate, s2_sustained, s2_peak = None, None, None
    for variant, ms in s2.items():
        p99 = med(vals(ms, "latency_ms.p99"))
        losses = vals(ms, "loss")
        d = med(vals(ms, "delivered_per_s"))
        if variant == "max":
            s2_peak = (d, max(losses) if losses else None, p99)
            continue
        if p99 is None or not losses or max(losses) > 0:
            continue
        if p99 <= 5:
            s2_ok_rate = float(variant)
        if p99 <= SUSTAINED_P99_MS and d and d >= 0.97 * float(variant):
            s2_sustained = (d, variant, p99)
    # S3: the highest rate delivered in full (no loss, deliveries >= 97 % of published x
    # subscribers), with its latency.
    s3_best = None
    for variant, ms in s3.items():
        losses = vals(ms, "loss")
        d = med(vals(ms, "delivered_per_s"))
        subs = get(ms[0].get("r") or {}, "params.sessions", 0)
        pub = med(vals(ms, "publish_per_s")) or 0
        if (losses and max(losses) == 0 and d and d >= 0.97 * pub * subs
                and (s3_best is None or d > s3_best[0])):
            s3_best = (d, variant, med(vals(ms, "latency_ms.p99")))
    s4_hs = med(vals(s4["max"], "handshakes_per_s")) if s4.get("max") else None
    s6_per = (s6["ir"] / s6["deliveries"]) if s6 and s6.get("deliveries") and s6.get("ir") else None

    # --- headline
    w("## Headline\n")
    rows = []
    if s1 and s1.get("r"):
        r = s1["r"]
        rows.append(("Concurrent authenticated sessions held (scenario 1)",
                     f"{get(r, 'sessions_established'):,} of {get(r, 'sessions_target'):,} "
                     f"for {get(r, 'params.hold_s'):.0f} s, final publish missed by "
                     f"{get(r, 'final_publish.missing', '–')}"))
    if s1p:
        rows.append((f"User-space memory per idle session ({s1p['sessions']:,} sessions)",
                     f"{fbytes(s1p['delta'])} (RSS growth); {fbytes(s1p['total'])} counting "
                     "the nodes' whole RSS"))
    if s2_ok_rate:
        rows.append(("Per-user push: highest offered rate with p99 ≤ 5 ms and no loss",
                     f"{s2_ok_rate:,.0f} msg/s"))
    elif s2:
        rows.append(("Per-user push: highest offered rate with p99 ≤ 5 ms and no loss",
                     "none of the rates tried"))
    if s2_sustained:
        rows.append(("Per-user push: maximum sustained rate (no loss, p99 ≤ 100 ms)",
                     f"{s2_sustained[0]:,.0f} msg/s delivered (offered "
                     f"{float(s2_sustained[1]):,.0f}/s, p99 {fms(s2_sustained[2])} ms)"))
    if s2_peak and s2_peak[0]:
        lossy = [v for v in vals(s2["max"], "loss") if v]
        rows.append(("Per-user push: peak throughput (`--rate max`, 5 s, backlog building)",
                     f"{s2_peak[0]:,.0f} msg/s delivered, p99 {fms(s2_peak[2])} ms"
                     + (f"; the nodes shed messages (counted) in {len(lossy)} of "
                        f"{len(s2['max'])} runs, up to {max(lossy):,}" if lossy else
                        ", no loss")))
    if s3_best:
        subs3 = get(next(iter(s3.values()))[0].get("r") or {}, "params.sessions", 0)
        top3 = [v for v in s3 if v != "max"][-1]
        rows.append((f"Broadcast: deliveries per second kept up with ({subs3:,} subscribers, "
                     "no loss)",
                     f"{s3_best[0]:,.0f}/s at {float(s3_best[1]):,.0f} msg/s, p99 "
                     f"{fms(s3_best[2])} ms"
                     + (" (the highest rate tried: the ceiling is higher)"
                        if s3_best[1] == top3 else "")))
    if s4_hs:
        rows.append(("Handshakes per second (HS256, 2 nodes)", f"{s4_hs:,.0f}/s"))
    if s6_per:
        rows.append(("Instructions per delivered message (broadcast, user space)",
                     f"{s6_per:,.0f}"))
    w(table(["", "this machine (2 cores, generator included)"], rows, ["---", "---"]) + "\n")

    # --- machine
    w("## Machine\n")
    w(table(["", ""], [
        ("CPU", f"{mach.get('nproc')} × {mach.get('cpu_model')}"
                + (f" ({float(mach['cpu_mhz']):.0f} MHz)" if mach.get("cpu_mhz") else "")),
        ("RAM", f"{mach.get('ram_gib')} GiB"),
        ("kernel / OS", f"{mach.get('kernel')} / {mach.get('os')}"),
        ("virtualisation", mach.get("virt") or "–"),
        ("open files (hard limit per process)", mach.get("open_files_hard")),
        ("Redis", (mach.get("redis") or "").replace("Redis server ", "")),
        ("commit", f"`{commit}`"),
        ("date", mach.get("date")),
        ("load average at start", " ".join(mach.get("loadavg_start") or [])),
    ], ["---", "---"]) + "\n")

    # --- method
    w(open(os.path.join(HERE, "method.md")).read().strip() + "\n")

    # --- scenario 1
    w("## 1. 100,000 concurrent authenticated sessions\n")
    if s1 and s1.get("r"):
        r = s1["r"]
        p = get(r, "params")
        w(f"{len(get(r, 'params.server_pids') or [])} nodes (`--workers 1`, one port with "
          f"`--reuseport`, each `--bridge`), one `wsrouter bridge` with `--redis-url`, Redis. "
          f"`wsrouter bench --procs {p['procs']} --sessions {p['sessions']:,} --ramp "
          f"{p['ramp']:.0f} --inflight {p['inflight']} --hold {p['hold_s']:.0f} --final-publish "
          f"--publish redis://… --server-pids …`. Run once.\n")
        hs = get(r, "handshake_latency_ms") or {}
        rows = [
            ("sessions established / target", f"{get(r, 'sessions_established'):,} / "
                                              f"{get(r, 'sessions_target'):,}"),
            ("sessions open at the end (after the hold)", f"{get(r, 'sessions_open_at_end'):,}"),
            ("closed by the server / handshake failures",
             f"{get(r, 'sessions_closed_by_server')} / {get(r, 'handshake_failures')}"),
            ("handshakes per second (ramp)", fnum(get(r, "handshakes_per_s"))),
            ("handshake latency p50 / p99 / max",
             f"{fms(hs.get('p50'))} / {fms(hs.get('p99'))} / {fms(hs.get('max'))} ms"),
        ]
        if s1p:
            rows += [
                ("node RSS (sum of 6) before → all up → end",
                 f"{fnum(s1p['rss_start_kib'] / 1024, 1)} → {fnum(s1p['rss_up_kib'] / 1024, 1)} → "
                 f"{fnum((get(r, 'memory.rss_end_kib') or 0) / 1024, 1)} MiB"),
                ("**user space per idle session** (RSS growth / sessions)",
                 f"**{fbytes(s1p['delta'])}** (target ≤ 4 KiB, ceiling 12 KiB)"),
                ("anonymous memory growth (RssAnon peak − before) / sessions", fbytes(s1p["anon"])),
                ("user space per session, whole RSS / sessions", fbytes(s1p["total"])
                 + (f" (the RSS before includes {s1p['file_before_kib'] / 1024:,.1f} MiB of "
                    "shared-library pages, counted once per node process)"
                    if s1p.get("file_before_kib") else "")),
                ("kernel TCP buffer memory (sockstat `mem` pages × 4096), before → up",
                 f"{fnum(s1p['sock_before'])} → {fnum(s1p['sock_after'])} pages = "
                 f"{fbytes(s1p['sock_per'])} per session"),
                ("kernel slab growth (sockets, files, both ends) / sessions",
                 f"{fbytes(s1p['slab'])} (client and server socket: the server's share "
                 f"is about half)" if s1p["slab"] is not None else "–"),
            ]
        fp = get(r, "final_publish") or {}
        rows += [
            ("final publish: sent / received / **missing**",
             f"{fp.get('sent', 0):,} / {fp.get('received', 0):,} / **{fp.get('missing', '–')}**"),
            ("warm-up (subscriptions through the bridge to Redis)",
             f"{get(r, 'warmup.rounds')} round(s), {fnum(get(r, 'warmup.ms'))} ms"),
            ("wall time of the run", f"{get(r, 'elapsed_s'):.0f} s"),
        ]
        if s1.get("server_cores") is not None:
            rows.append(("CPU during the run: servers / bench / other",
                         f"{s1['server_cores']:.2f} / {s1['bench_cores']:.2f} / "
                         f"{s1['other_cores']:.2f} cores (average)"))
        w(table(["", "value"], rows, ["---", "---:"]) + "\n")
    else:
        w("Not run.\n")

    # --- scenario 7 (memory vs sessions), right after 1
    w("## 7. Memory per session vs sessions\n")
    mem_hold = next((get(ms[0]["r"], "params.hold_s") for ms in mem.values() if ms[0].get("r")), 0) or 0
    base_mib = 0
    if mem_points and mem_points[0]["rss_start_kib"]:
        p0 = mem_points[0]
        nodes = next((len(get(m["r"], "params.server_pids") or [1]) for ms in mem.values()
                      for m in ms if m.get("r")), None) or (
                len(get(s1["r"], "params.server_pids") or [1]) if s1 and s1.get("r") else 1)
        base_mib = p0["rss_start_kib"] / nodes / 1024
    if mem_points:
        w("Fresh nodes for each point (6 nodes, `--workers 1`, behind the bridge), sessions held "
          f"for {mem_hold:.0f} s; "
          "the 100,000 point is scenario 1. \"RSS growth\" is (sum of node VmRSS when all "
          "sessions are up − before the first connection) / sessions; \"total\" divides the "
          f"whole RSS, so it includes each node's fixed {base_mib:.1f} MiB at start (threads, "
          "ZeroMQ, libraries, buffers) and falls as sessions grow. Kernel slab growth is read from /proc/meminfo "
          "(peak during the run − before) and covers both ends of each loopback connection "
          "(the load generator's socket too).\n")
        rows = []
        for p in sorted(mem_points, key=lambda p: p["sessions"]):
            rows.append((f"{p['sessions']:,}", fbytes(p["delta"]), fbytes(p["anon"]),
                         fbytes(p["total"]), fbytes(p["sock_per"]), fbytes(p["slab"]),
                         fnum(p["hs"])))
        w(table(["sessions", "RSS growth / session", "RssAnon growth / session",
                 "total RSS / session",
                 "sockstat TCP mem / session", "slab growth / session (2 ends)", "handshakes/s"],
                rows) + "\n")
        png = plot_memory(docs, mem_points)
        if png:
            w(f"![memory per session]({png})\n")
    else:
        w("Not run.\n")

    # --- scenario 2
    w("## 2. Per-user push, Redis → client\n")
    if s2:
        first = next(iter(s2.values()))[0]["r"] or {}
        w(f"{get(first, 'params.sessions', 0):,} users, one session each, on 2 nodes "
          "(`--workers 1` each, each on its own port so that its `/metrics` can be read; "
          "the bench spreads sessions round robin) behind one `wsrouter bridge` subscribed "
          "per user on Redis: the deployment layout of scenario 1, where every message "
          "crosses Redis → bridge → ZeroMQ/TCP → node → session. Chosen over one node with "
          "an in-process bridge because it is the multi-node layout and uses both cores."
          f" Bench with `--procs {get(first, 'params.procs')}` (a publisher process and "
          "receiver processes). The bench publishes `PUBLISH ws:{user}` round robin "
          f"over the users (pipelined, at most {get(first, 'params.pipeline')} unanswered) at the "
          f"offered rate for {get(first, 'params.duration_s', 0):.0f} s after a warm-up; "
          f"{get(first, 'params.size')}-byte payloads. {len(next(iter(s2.values())))} run(s) per "
          "rate; median (min–max).\n")
        rows = []
        for variant, ms in s2.items():
            rows.append((variant if variant == "max" else f"{float(variant):,.0f}",
                         spread(vals(ms, "publish_per_s"), fnum),
                         spread(vals(ms, "delivered_per_s"), fnum),
                         spread(vals(ms, "latency_ms.p50"), fms),
                         spread(vals(ms, "latency_ms.p99"), fms),
                         spread(vals(ms, "latency_ms.p999"), fms),
                         spread(vals(ms, "latency_ms.max"), fms),
                         spread(vals(ms, "loss"), fnum),
                         spread([(m.get("node_counters") or {}).get("deliver_drops")
                                 for m in ms], fnum),
                         spread([m.get("server_cores") for m in ms],
                                lambda v: f"{v:.2f}"),
                         spread([m.get("bench_cores") for m in ms],
                                lambda v: f"{v:.2f}")))
        w(table(["offered msg/s", "published/s", "delivered/s", "p50 ms", "p99 ms", "p99.9 ms",
                 "max ms", "lost", "dropped by nodes", "CPU servers", "CPU bench"], rows) + "\n")
        w("\"dropped by nodes\": `wsrouter_deliver_drops_total` over the run, summed over "
          "the nodes: messages (here one delivery each) a node shed because its session "
          "worker's queue was full (overload; at-most-once by design, and counted). ")
        w("CPU columns: cores used on average during the run (Redis + bridge + nodes; the "
          "load generator), from /proc.\n")
        if s2_ok_rate:
            w(f"**Highest offered rate with p99 ≤ 5 ms and no loss: {s2_ok_rate:,.0f} msg/s.** ")
        else:
            w("**No offered rate met p99 ≤ 5 ms with no loss.** ")
        if s2_sustained:
            w(f"**Maximum sustained rate: {s2_sustained[0]:,.0f} msg/s** delivered (offered "
              f"{float(s2_sustained[1]):,.0f}/s: the highest offered rate delivered in full, "
              f"without loss and with p99 ≤ {SUSTAINED_P99_MS} ms, i.e. without a backlog "
              "building up during the run). ")
        if s2_peak and s2_peak[0]:
            w(f"With `--rate max` the publisher (Redis `PUBLISH`, {128} commands in flight) "
              "outruns the delivery path: the nodes moved "
              f"{s2_peak[0]:,.0f} msg/s while a backlog built up (p99 {fms(s2_peak[2])} ms)"
              + (f" and shed up to {s2_peak[1]:,} messages in a run (counted by the nodes, see "
                 "\"dropped by nodes\")." if s2_peak[1] else ", without loss."))
        w("\n")
        png = plot_s2(docs, s2, s5u)
        if png:
            w(f"![p99 latency vs offered rate]({png})\n")
    else:
        w("Not run.\n")

    # --- scenario 3
    w("## 3. Broadcast fan-out\n")
    if s3:
        first = next(iter(s3.values()))[0]["r"] or {}
        subs = get(first, "params.sessions", 0)
        w(f"One channel (`bench-room`, claimed in every token) with {subs:,} subscribers on the "
          "same 2 nodes behind the bridge; the bench publishes `PUBLISH ws:channel:bench-room` "
          f"on Redis, {get(first, 'params.size')}-byte messages, for "
          f"{get(first, 'params.duration_s', 0):.0f} s per rate. Deliveries = messages × "
          "subscribers received by the clients. Latency per delivery (every subscriber's copy "
          "counts). Median (min–max).\n")
        rows = []
        for variant, ms in s3.items():
            rows.append((variant if variant == "max" else f"{float(variant):,.0f}",
                         spread(vals(ms, "publish_per_s"), lambda v: fnum(v, 1)),
                         spread(vals(ms, "delivered_per_s"), fnum),
                         spread(vals(ms, "latency_ms.p50"), fms),
                         spread(vals(ms, "latency_ms.p99"), fms),
                         spread(vals(ms, "latency_ms.p999"), fms),
                         spread(vals(ms, "latency_ms.max"), fms),
                         spread(vals(ms, "loss"), fnum),
                         spread([(m.get("node_counters") or {}).get("deliver_drops")
                                 for m in ms], fnum),
                         spread([m.get("server_cores") for m in ms], lambda v: f"{v:.2f}"),
                         spread([m.get("bench_cores") for m in ms], lambda v: f"{v:.2f}")))
        w(table(["offered msg/s", "published/s", "deliveries/s", "p50 ms", "p99 ms",
                 "p99.9 ms", "max ms", "lost", "dropped by nodes", "CPU servers", "CPU bench"],
                rows) + "\n")
        rates = [v for v in s3 if v != "max"]
        if s3_best and rates and s3_best[1] == rates[-1]:
            w(f"Every rate was delivered in full, the highest ({float(rates[-1]):,.0f} msg/s = "
              f"{s3_best[0]:,.0f} deliveries/s) too: the ceiling of this layout lies beyond the "
              "sweep (latency grows with the rate as messages queue in batches).\n")
        if rates:
            low = s3[rates[0]]
            nodes = len(get(low[0].get("r") or {}, "params.urls") or [1])
            per_worker = subs / max(nodes, 1)
            p50, p99 = med(vals(low, "latency_ms.p50")), med(vals(low, "latency_ms.p99"))
            top = s3[rates[-1]]
            if p99 and per_worker:
                w(f"Reading the latency: at {float(rates[0]):,.0f} msg/s every message is its own "
                  f"batch, and each node's single session worker writes it to its "
                  f"~{per_worker:,.0f} sessions one `writev` after the other; the last copy "
                  f"leaves about p99 = {fms(p99)} ms after publishing, i.e. "
                  f"~{p99 * 1000 / per_worker:.0f} µs per recipient and worker thread (on loopback "
                  "each `writev` also runs the receiving socket's TCP processing on this CPU, "
                  "and the generator reading 10,000 sockets competes for the same 2 cores). "
                  "That serial fan-out, not throughput, sets broadcast latency here: at "
                  f"{float(rates[-1]):,.0f} msg/s several messages share each `writev`, so "
                  f"deliveries/s grow {(med(vals(top, 'delivered_per_s')) or 0) / (med(vals(low, 'delivered_per_s')) or 1):.0f}× "
                  f"while p50 goes from {fms(p50)} to {fms(med(vals(top, 'latency_ms.p50')))} ms. "
                  "On a machine with more cores, more workers per node (`--workers`) would split "
                  "the fan-out across threads (not measured here).\n")
        png = plot_s3(docs, s3)
        if png:
            w(f"![broadcast deliveries and latency]({png})\n")
    else:
        w("Not run.\n")

    # --- scenario 4
    w("## 4. Handshake rate (HS256)\n")
    if s4:
        ms0 = next(iter(s4.values()))
        first = ms0[0]["r"] or {}
        w(f"{get(first, 'params.sessions', 0):,} sessions against 2 nodes (`--workers 1`, one "
          f"port, behind the bridge), bench with `--procs {get(first, 'params.procs')}` and "
          f"`--inflight {get(first, 'params.inflight')}`: TCP connect, HTTP upgrade, HS256 "
          "verification of a minted token, 101, subscription of the user's topic. Handshake "
          "latency = connect() to the complete 101 answer. Two ways: as fast as possible "
          "(`--ramp` far above what the nodes can do: the rate is the capacity, the latency is "
          "mostly waiting in the generator's in-flight window and the listen queues, by "
          "Little's law inflight / rate), and paced at a rate the nodes can sustain (the "
          f"latency of one handshake). {len(ms0)} run(s) each; median (min–max).\n")
        rows = []
        for variant, ms in sorted(s4.items(), key=lambda kv: kv[0] != "max"):
            label = ("as fast as possible (`--ramp " + f"{get(ms[0]['r'] or {}, 'params.ramp', 0):,.0f}`)"
                     if variant == "max" else f"paced, `--ramp {float(variant):,.0f}`")
            rows.append((label, spread(vals(ms, "sessions_established"), fnum),
                         spread(vals(ms, "handshake_failures"), fnum),
                         spread(vals(ms, "handshakes_per_s"), fnum),
                         spread(vals(ms, "handshake_latency_ms.p50"), fms),
                         spread(vals(ms, "handshake_latency_ms.p90"), fms),
                         spread(vals(ms, "handshake_latency_ms.p99"), fms),
                         spread(vals(ms, "handshake_latency_ms.max"), fms),
                         spread([m.get("server_cores") for m in ms], lambda v: f"{v:.2f}")
                         + " / " + spread([m.get("bench_cores") for m in ms], lambda v: f"{v:.2f}")))
        w(table(["", "established", "failed", "handshakes/s", "p50 ms", "p90 ms", "p99 ms",
                 "max ms", "CPU servers / bench"], rows) + "\n")
    else:
        w("Not run.\n")

    # --- scenario 5
    w("## 5. Slow consumers\n")
    if s5u or s5c:
        w("The same runs as scenarios 2 and 3 at a moderate rate, with extra sessions that "
          "never read (`--slow N`: small receive buffer, never read; in user mode slow session "
          "*j* shares user *j* with a normal session, in channel mode it subscribes to the "
          "channel). Statistics are over the normal sessions only. Target: p99 with slow "
          "sessions ≤ 2 × p99 without. The server closes a slow session once "
          "`WEBSOCKET_MAX_QUEUE` (8 MiB) is queued for it. ")
        amounts = []
        for label, groups_ in (("per-user push", s5u), ("broadcast", s5c)):
            if not groups_:
                continue
            r0 = next(iter(groups_.values()))[0].get("r") or {}
            rate = get(r0, "params.rate") or 0
            users = 1 if get(r0, "params.mode") == "channel" else (get(r0, "params.sessions") or 1)
            size = (get(r0, "params.size") or 0) + 2
            dur = get(r0, "params.duration_s") or 0
            amounts.append(f"{label}: ~{rate / users * size * dur / 1024:,.1f} KiB "
                           f"({rate / users:,.0f} msg/s of {size - 2} bytes for {dur:.0f} s)")
        if amounts:
            w("What a slow session is sent during a run: " + "; ".join(amounts) + ". Its "
              "receive buffer is 4 KiB, so a per-user slow session at this rate hardly backs up "
              "at all, and a broadcast one gets more than its receive buffer holds (the rest "
              "waits on the server side) but stays far below the 8 MiB queue limit: what is "
              "measured is the cost of carrying slow sessions, not of closing them (the "
              "closing path under load is exercised by `tests/e2e_hostile.py`).")
        w("\n")
        rows = []
        for label, base_groups, base_rate, slow_groups in (
                ("per-user push", s2, None, s5u), ("broadcast", s3, None, s5c)):
            if not slow_groups:
                continue
            rate = get(next(iter(slow_groups.values()))[0]["r"] or {}, "params.rate")
            base = None
            for variant, ms in base_groups.items():
                if variant != "max" and rate is not None and abs(float(variant) - float(rate)) < 1e-6:
                    base = ms
            base_p99 = med(vals(base, "latency_ms.p99")) if base else None
            if base:
                rows.append((label, f"{float(rate):,.0f}", "0", spread(vals(base, "latency_ms.p50"), fms),
                             spread(vals(base, "latency_ms.p99"), fms),
                             spread(vals(base, "latency_ms.p999"), fms),
                             spread(vals(base, "loss"), fnum), "–", "1.00"))
            for variant, ms in slow_groups.items():
                p99 = med(vals(ms, "latency_ms.p99"))
                ratio = (p99 / base_p99) if p99 and base_p99 else None
                closed = vals(ms, "slow_sessions_closed")
                rows.append((label, f"{float(rate):,.0f}", variant,
                             spread(vals(ms, "latency_ms.p50"), fms),
                             spread(vals(ms, "latency_ms.p99"), fms),
                             spread(vals(ms, "latency_ms.p999"), fms),
                             spread(vals(ms, "loss"), fnum),
                             spread(closed, fnum),
                             (f"**{ratio:.2f}**" if ratio and ratio > 2 else f"{ratio:.2f}")
                             if ratio else "–"))
        w(table(["scenario", "msg/s", "slow sessions", "p50 ms", "p99 ms", "p99.9 ms", "lost",
                 "slow closed by server", "p99 / p99 without"], rows) + "\n")
    else:
        w("Not run.\n")

    # --- scenario 6
    w("## 6. CPU profile of the hot path\n")
    if s6 and s6.get("deliveries"):
        tool = s6.get("variant")
        s6_rate = "?"
        try:
            s6_rate = f"{json.load(open(os.path.join(res, 's6-profile.json')))['params']['rate']:,.0f}"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        w(f"One node (`--workers 1`, no bridge: the HTTP API publishes straight to its router) "
          f"with {s6['sessions']:,} sessions on one channel; {s6['messages']:,} broadcasts "
          f"through `POST /api/publish` at {s6_rate}/s. "
          + ("`perf stat -e instructions:u` is not supported on this machine (a VM without "
             "a PMU), so the node runs under `valgrind --tool=callgrind`; "
             if tool == "callgrind" else "`perf stat -e instructions:u -p NODE`; ")
          + "the count covers the steady state only: from when the clients have received "
          "10 % of the measured deliveries to when they have 90 % (so connecting, warm-up and "
          "disconnecting are outside it); deliveries are the node's "
          "`wsrouter_messages_out_total` over the same interval. It includes the publish "
          "side (HTTP request parsing, JSON body, envelope) shared by all recipients of a "
          "message. User-space instructions only: the kernel's share (`writev`, loopback "
          "TCP, epoll) is not in these counts.\n")
        w(table(["", "value"], [
            ("instructions (user space, whole node)", f"{s6['ir']:,}"),
            ("deliveries in the interval", f"{s6['deliveries']:,}"),
            ("**instructions per delivered message**", f"**{s6_per:,.0f}**"),
            ("commit", f"`{s6.get('commit')}`"),
        ], ["---", "---:"]) + "\n")
        w(f"instructions per delivered message: {s6_per:,.0f} (commit {s6.get('commit')})\n")
        w("The figure depends on how many messages the worker handles per batch (one "
          "`writev` per session per batch), which depends on timing: expect runs of the same "
          "commit to differ by about 10 %; compare commits on the trend, not on one row.\n")
        for kind, title in (("inclusive", "inclusive cost"), ("self", "self cost")):
            top = callgrind_top(os.path.join(res, f"callgrind-{kind}.txt"))
            if top:
                w(f"Top 15 functions by {title} (`callgrind_annotate"
                  + (" --inclusive=yes" if kind == "inclusive" else "") + "`):\n")
                w(table(["Ir", "%", "Ir / delivery", "function", "file"],
                        [(f"{ir:,}", f"{pct:.1f}", f"{ir / s6['deliveries']:,.0f}", f"`{fn}`", f)
                         for ir, pct, fn, f in top], ["---:", "---:", "---:", "---", "---"]) + "\n")
        tsv = os.path.join(res, "instructions.tsv")
        if os.path.exists(tsv):
            lines = [l.rstrip("\n").split("\t") for l in open(tsv) if l.strip()]
            if len(lines) > 1:
                w("History (`bench-results/instructions.tsv`, one row per full run of "
                  "`scripts/bench`):\n")
                w(table(lines[0], lines[1:][-10:], ["---"] * 3 + ["---:"]) + "\n")
    else:
        w("Not run.\n")

    # --- peers
    w(open(os.path.join(HERE, "peers.md")).read().strip() + "\n")
    rows = []
    if s1 and s1.get("r"):
        n = get(s1["r"], "sessions_established")
        rows.append(("wsrouter (this run)", f"{n:,} sessions on {ncores} cores shared with the "
                     "load generator", f"{n / ncores:,.0f}",
                     f"{fbytes(s1p['delta'])} user + {fbytes(s1p['slab'] / 2 if s1p and s1p['slab'] else None)} kernel (slab, server end ≈ ½)"
                     if s1p else "–",
                     (f"per-user {s2_sustained[0]:,.0f}/s → {s2_sustained[0] / ncores:,.0f}/s/core; "
                      if s2_sustained else "")
                     + (f"broadcast {s3_best[0]:,.0f} deliveries/s → "
                        f"{s3_best[0] / ncores:,.0f}/s/core" if s3_best else ""),
                     (f"p99 ≤ 5 ms up to {s2_ok_rate:,.0f} msg/s" if s2_ok_rate else "–")))
    rows += [
        ("Centrifugo (published)", "1M connections, 40 CPUs", "25,000",
         "~30 KB (tuned idle: ~11.6 KB + ~4 KB kernel)", "500k msg/s → 12,500/s/core", "p99 200 ms"),
        ("Phoenix (published)", "2M connections, 40 cores", "50,000", "–", "–", "–"),
        ("Pushpin (published)", "1M connections, 8 cores", "125,000", "–",
         "~8k msg/s → 1,000/s/core", "–"),
    ]
    w(table(["", "scale", "connections per core", "memory per connection",
             "messages per core", "latency"], rows, ["---"] * 6) + "\n")
    w("Read this with care: the peers' figures come from other hardware, other message "
      "patterns (mostly broadcast, where one published message becomes many deliveries) "
      "and generators on separate machines; ours come from 2 cores that also run the load "
      "generator, Redis and the bridge, so the per-core figures here are a floor, not a "
      "measurement of the node alone."
      + (f" Our connections per core are bounded by the sessions we asked for "
         f"({get(s1['r'], 'sessions_target'):,}), not by a limit we hit."
         if s1 and s1.get("r") else "") + "\n")

    # --- handshakes of one node process
    for bp in ("none", "redis"):
        hs_path = os.path.join(res, "handshakes-%s.json" % bp)
        if not os.path.exists(hs_path):
            continue
        hs = json.load(open(hs_path))
        if bp == "none":
            w("## 4b. Handshakes of one node process (HS256)\n")
            w("Measured by `scripts/bench.d/handshakes.py`: one node (`--workers 2`, in-process "
              "bridge), 10,000 sessions of distinct users opened as fast as the generator can "
              "(`wsrouter bench`, minted HS256 tokens, 2,000 in flight), each binary with its "
              "own generator; this build and the baseline in turn, "
              f"{hs.get('rounds')} interleaved rounds, median (min–max). Node CPU per "
              "handshake: all its threads while the sessions open, and then for the teardown "
              "after the generator closes them; the generator's CPU per handshake. Target: "
              "30,000 handshakes/s.\n")
        w(f"Backplane: **{bp}**" + (" (each session SUBSCRIBEs its user on Redis; its "
          "connect and disconnect are a lifecycle event and a presence update)"
          if bp == "redis" else "") + f". Load average at start "
          f"{' '.join(hs.get('loadavg_start', []))}.\n")

        def rng(v, digits=0):
            if not v:
                return "—"
            f = (lambda x: fnum(x, digits)) if digits else fnum
            return f"{f(v['median'])} ({f(v['min'])}–{f(v['max'])})"
        rows = []
        for key in ("this", "baseline"):
            b = hs.get("builds", {}).get(key)
            if not b:
                continue
            threads = {}
            for run in b.get("runs", []):
                for name, us in (run.get("node_us_open_by_thread") or {}).items():
                    threads.setdefault(name, []).append(us)
            split = ", ".join(f"{n.replace('wsr-', '').rstrip('-')} {statistics.median(v):.0f}"
                              for n, v in sorted(threads.items()) if statistics.median(v) >= 1)
            rows.append([key, rng(b.get("handshakes_per_s")), rng(b.get("node_us_open")),
                         split, rng(b.get("node_us_teardown")), rng(b.get("bench_us"))])
        w(table(["build", "handshakes/s", "node µs / handshake (open)", "by thread (median µs)",
                 "node µs (teardown)", "generator µs / handshake"], rows))
        if hs.get("ratio_handshakes_per_s"):
            w(f"\nHandshakes/s, this build over the baseline: **{hs['ratio_handshakes_per_s']}×**.\n")
        w("")

    # --- against the floor
    pf_path = os.path.join(res, "push-floor.json")
    if os.path.exists(pf_path):
        pf = json.load(open(pf_path))
        floor_us = get(pf, "floor.writer_cpu_us_per_delivery")
        w("## 8. Per-user push against the physical floor\n")
        w("Measured in one run by `scripts/bench.d/push_floor.py`: one node "
          "(`--workers 2`, in-process bridge), a fresh Redis, "
          f"{pf.get('sessions', 0):,} sessions of distinct users, Redis `PUBLISH ws:{{user}}` "
          "round robin by the same load generator for both builds; server CPU per delivery "
          "is the node's CPU (all threads) over its deliveries between 10 % and 90 % of the "
          "run. The floor is `floor.c` (one `write()` of a pre-framed 40-byte frame per "
          f"delivery) in the same run: **{fnum(floor_us, 2)} µs** per delivery. Load average "
          f"at start {' '.join(pf.get('loadavg_start', []))}.\n")
        rows = []
        for key, label in (("this", "this build"), ("baseline", "baseline (before the spine)")):
            for mode in ("paced", "max"):
                r = get(pf, f"{key}.{mode}")
                if not r:
                    continue
                rows.append([label, "20,000 msg/s" if mode == "paced" else "closed loop (max)",
                             fnum(r.get("delivered_per_s")),
                             fnum(r.get("server_cpu_us_per_delivery"), 2),
                             f"{r.get('x_floor')}×" if r.get("x_floor") else "—",
                             fms(r.get("latency_p99_ms")),
                             f"{r.get('loss')}/{r.get('duplicates')}/{r.get('reordered')}"])
        w(table(["build", "offered", "delivered/s", "server CPU µs / delivery", "× floor",
                 "p99", "loss/dup/reordered"], rows))
        if pf.get("max_delivered_vs_baseline"):
            w(f"\nClosed-loop delivered/s, this build over the baseline: "
              f"**{pf['max_delivered_vs_baseline']}×** (target 1.5×; per-delivery target "
              "≤ 1.3× the floor).\n")
        w("")

    # --- reconnect storm
    st_path = os.path.join(res, "recover-storm.json")
    if os.path.exists(st_path):
        st = json.load(open(st_path))
        w("## 9. Reconnect storm with recovery (wsrouter.v1, Redis history)\n")
        w(st.get("method", "") + "\n")
        w(table(["sessions", "missed each", "recovered", "not recovered", "all recovered after",
                 "per session p50 / p99", "Redis commands (phase 3)", "Redis commands/s"],
                [[fnum(st.get("sessions")), fnum(st.get("missed_each")), fnum(st.get("recovered")),
                  fnum(st.get("not_recovered")), f"{st.get('all_recovered_s')} s",
                  f"{st.get('recovery_s_p50')} s / {st.get('recovery_s_p99')} s",
                  fnum(st.get("redis_commands")), fnum(st.get("redis_commands_per_s"))]]))
        w("")

    # --- history on vs off
    h_off, h_on = (os.path.join(res, "push-history-%d.json" % h) for h in (0, 100))
    if os.path.exists(h_off) and os.path.exists(h_on):
        w("## 10. Per-user push with history on vs off\n")
        w("`scripts/bench.d/push_floor.py --via http`: the same node and load, publications "
          "through the HTTP API; with history (size 100) each goes through `publish.lua` "
          "(INCR, XADD, PUBLISH in one script) and carries its offset. Server CPU per "
          "delivery counts the node only (Redis' own CPU is not in it).\n")
        rows = []
        for path, label in ((h_off, "history off"), (h_on, "history on (100)")):
            pf = json.load(open(path))
            for mode in ("paced", "max"):
                r = get(pf, f"this.{mode}")
                if r:
                    rows.append([label, "10,000 msg/s" if mode == "paced" else "closed loop",
                                 fnum(r.get("delivered_per_s")),
                                 fnum(r.get("server_cpu_us_per_delivery"), 2),
                                 fms(r.get("latency_p99_ms")),
                                 f"{r.get('loss')}/{r.get('duplicates')}/{r.get('reordered')}"])
        w(table(["", "offered", "delivered/s", "server CPU µs / delivery", "p99",
                 "loss/dup/reordered"], rows))
        w("")

    # --- write delay
    d_off, d_on = (os.path.join(res, "write-delay-%s.json" % d) for d in ("0", "5ms"))
    if os.path.exists(d_off) and os.path.exists(d_on):
        w("## 11. Write coalescing (`WEBSOCKET_WRITE_DELAY`)\n")
        w("`scripts/bench.d/push_floor.py --mode channel --rate 100 --no-max`: one channel, "
          "every session subscribed, 100 broadcasts/s for 10 s through Redis; with a delay "
          "a session's deliveries within the window leave in one `writev`. The floor is "
          "`floor.c` in the same run.\n")
        rows = []
        for path, label in ((d_off, "off"), (d_on, "5ms")):
            pf = json.load(open(path))
            r = get(pf, "this.paced") or {}
            rows.append([label, fnum(r.get("delivered_per_s")),
                         fnum(r.get("server_cpu_us_per_delivery"), 2),
                         f"{r.get('x_floor')}×" if r.get("x_floor") else "—",
                         fms(r.get("latency_p50_ms")), fms(r.get("latency_p99_ms")),
                         f"{r.get('loss')}"])
        w(table(["write delay", "delivered/s", "server CPU µs / delivery", "× floor", "p50",
                 "p99", "loss"], rows))
        w("")

    # --- scale-out
    sc_path = os.path.join(res, "scale.json")
    if os.path.exists(sc_path):
        sc = json.load(open(sc_path))
        w("## 12. Scale-out: Redis Cluster sharded Pub/Sub, several bridges\n")
        w(f"`scripts/bench.d/scale.py`, {fnum(sc.get('sessions'))} sessions of as many users, "
          f"closed loop for {sc.get('duration_s')} s per row, every process on this machine. "
          "Cluster rows: 3 masters + 3 replicas, one node publishing through its API (the "
          "bridge sends SPUBLISH to the owner, or PUBLISH to one node that the cluster bus "
          "copies to all); Redis CPU summed over the 6 redis-server processes. Bridge rows: "
          "one Redis, 1 or 2 `wsrouter bridge` processes, two nodes listing them all, "
          "`PUBLISH` straight to Redis; CPU summed over the bridges.\n")
        rows = []
        for key, label in (("sharded", "cluster, sharded (SPUBLISH)"),
                           ("classic", "cluster, classic (PUBLISH)")):
            r = get(sc, f"cluster.{key}")
            if r:
                rows.append([label, fnum(r.get("delivered_per_s")),
                             f"{r.get('redis_cpu_us_per_published')} µs / published", "",
                             f"{r.get('loss')}/{r.get('duplicates')}"])
        for key, label in (("bridges_1", "1 bridge"), ("bridges_2", "2 bridges")):
            r = get(sc, f"bridges.{key}")
            if r:
                rows.append([label, fnum(r.get("delivered_per_s")), "",
                             f"{r.get('bridges_cpu_us_per_delivered')} µs / delivered "
                             f"(topics {r.get('topics_per_bridge_mid_run')})",
                             f"{r.get('loss')}/{r.get('duplicates')}"])
        w(table(["", "delivered/s", "Redis CPU", "bridges' CPU", "loss/dup"], rows))
        w("")

    # --- limits
    w("## What limits us here\n")
    lim = []
    busiest = []
    for scen, label in (("s2", "per-user push"), ("s3", "broadcast")):
        fixed = {v: ms for v, ms in groups(runs, scen).items() if v != "max"}
        if fixed:
            v, ms = list(fixed.items())[-1]
            sc = med([m.get("server_cores") for m in ms])
            bc = med([m.get("bench_cores") for m in ms])
            if sc is not None and bc is not None:
                busiest.append(f"{label} at {float(v):,.0f} msg/s: servers {sc:.2f}, "
                               f"generator {bc:.2f} cores ({bc / ncores:.0%} of the machine)")
    if busiest:
        lim.append(f"**The load generator shares the {ncores} cores.** At the highest fixed "
                   "rates (averages over the whole run, drain included): "
                   + "; ".join(busiest) + ". Redis, the bridge and the nodes get what the "
                   "generator leaves, and the kernel's loopback TCP work for both ends of every "
                   "connection runs on the same CPUs: the figures are conservative for a node "
                   "whose clients are elsewhere.")
    else:
        lim.append(f"**The load generator shares the {ncores} cores** with Redis, the bridge "
                   "and the nodes, and loopback TCP costs both ends on the same CPUs.")
    lim.append("**More processes than cores.** Up to 6 nodes, the bridge, Redis and 6 bench "
               "processes share 2 cores; latency includes run-queue waits whenever more than "
               "two of them are runnable, which is why tails (p99.9, max) grow well before "
               "throughput saturates.")
    lim.append("**One Redis and one bridge thread.** Every per-user message crosses Redis "
               "(single-threaded) and the bridge actor (one thread) before reaching a node; "
               "in per-topic mode 100,000 sessions are 100,000 Redis subscriptions.")
    lim.append("**Open files: 20,000 per process (hard limit).** Hence 6 nodes with "
               "`--reuseport` and `--procs 6` for 100,000 sessions; SO_REUSEPORT spreads "
               "connections by hash, so the nodes are only roughly equal.")
    lim.append("**Loopback only.** No NIC, no real network latency or packet loss; kernel "
               "socket buffers stay nearly empty for idle sessions, so the sockstat figure "
               "is close to zero and slab memory is the better kernel measure.")
    if any(m.get("other_cores", 0) > 0.15 for m in runs):
        bad = [m["name"] for m in runs if m.get("other_cores", 0) > 0.15]
        lim.append(f"**Other load on the machine.** In {len(bad)} run(s) other processes used "
                   "more than 0.15 cores on average (see Findings): those figures are "
                   "disturbed and should be re-run on a quiet machine.")
    for item in lim:
        w(f"- {item}")
    w("")

    # --- findings
    w("## Findings of this run\n")
    notes = os.path.join(HERE, "notes.md")
    if findings:
        w("Detected automatically in the results (loss, failures, reconnects, other load):\n")
        for f in findings:
            w(f"- {f}")
        w("")
    else:
        w("Nothing unusual detected automatically (no loss, failures, reconnects, dead "
          "servers or significant other load in any run).\n")
    if os.path.exists(notes):
        w(open(notes).read().strip() + "\n")

    # --- reproduce
    w("## Reproducing\n")
    w("```sh\nscripts/build\nscripts/bench            # all scenarios, ~9 min, rewrites this file\n"
      "scripts/bench --quick    # smoke test of the script, ~2 min\n"
      "scripts/bench --only s2 --out /tmp/b   # one scenario, elsewhere\n```\n")
    w("Each run's JSON report is `bench-results/NAME.json` (the output of `wsrouter bench`, "
      "see `wsrouter bench --help`); `bench-results/manifest.jsonl` has, per run, the wall "
      "time, CPU ticks of the machine / servers / bench, Redis reconnects and bridge drops "
      "seen during it; `machine.json` the machine.\n")

    open(os.path.join(docs, "BENCHMARKS.md"), "w").write("\n".join(out).rstrip() + "\n")


def main():
    args = sys.argv[1:]
    if args[:1] == ["--line"]:
        line(args[1], args[2])
    elif args[:1] == ["--doc"]:
        elapsed = int(args[args.index("--elapsed") + 1]) if "--elapsed" in args else 0
        doc(args[1], elapsed)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

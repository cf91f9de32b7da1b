#!/usr/bin/python3
"""Turn the records of tests/bench/run.sh into a table, JSON and a PNG chart.

usage: report.py RESULTS.tsv OUT.json OUT.png

RESULTS.tsv has one record a line: KIND <tab> KEY <tab> TARGET <tab> VALUE,
KIND one of meta, job, detail, extra, snap, problem, failed, skipped (a
target this machine cannot run: KEY says why), round (KEY: the number of
the round whose job records follow; a job's figure is the median of its
rounds).  Records of runs from before
a target existed simply lack it.  Runs on Debian 12's python3 (3.11) with
python3-matplotlib.
"""

import json
import sys
from statistics import median

TARGETS = ["raw", "fuse-null", "fuse-pass", "fuse-pass-uring", "ploopfs",
           "ploopfs-uring", "loop-ploopfs", "loop-raw", "qsd"]
OURS = ["ploopfs", "loop-ploopfs"]
# reference FUSE servers (tests/bench/fuse_ceiling.c): not judged
CEILINGS = ["fuse-null", "fuse-pass"]
# FUSE over io_uring: each -uring target and the same server over
# /dev/fuse.  Runs on kernels without it (and older results) lack them:
# their columns, bars and notes appear only when measured.
URING = {"ploopfs-uring": "ploopfs", "fuse-pass-uring": "fuse-pass"}
REFERENCE = CEILINGS + ["fuse-pass-uring", "loop-raw"]

# name, unit, goal (ratio to raw, design targets), reference job of raw
# and qsd for the ratios (None: the job itself)
JOBS = [
    ("seqwrite_1M_qd8", "MiB/s", 0.7, None),
    ("seqread_1M_qd8", "MiB/s", 0.9, None),
    ("randread_4k_qd32", "IOPS", 0.6, None),
    ("randread_4k_qd1", "IOPS", None, None),
    ("randwrite_4k_qd32", "IOPS", 0.6, None),
    ("randwrite_4k_qd1_fsync", "IOPS", 0.8, None),
    ("cow_randwrite_4k_qd32", "MiB/s", None, "randwrite_4k_qd32"),
    ("randread_4k_qd32_3deltas", "IOPS", None, "randread_4k_qd32"),
]
WRITE_JOBS = {"seqwrite_1M_qd8", "randwrite_4k_qd32",
              "randwrite_4k_qd1_fsync", "cow_randwrite_4k_qd32"}
UNITS = {name: unit for name, unit, _, _ in JOBS}
# details that add up over the rounds
SUMMED = {"seqwrite_passes", "ring_requests"}

NOTES = [
    "fuse-null: the FUSE round trip alone, no I/O; fuse-pass: one "
    "synchronous pread/pwrite per request, no mapping: ceilings of any "
    "FUSE daemon here (tests/bench/fuse_ceiling.c, ploopfs's FUSE setup).  "
    "Reference rows like loop-raw, not judged; ratio_to_fuse_null and "
    "ratio_to_fuse_pass are ploopfs's figure over theirs.",
    "qsd: qemu-storage-daemon 7.2 corrupts data under concurrent O_DIRECT "
    "writes (peers.md 3.2); its write figures (marked +) are reported but "
    "not trustworthy.",
    "seqwrite_1M_qd8: whole allocating passes, each into a fresh file or "
    "image, until the runtime is used up; bytes of all passes over fio's "
    "time.",
    "cow_randwrite_4k_qd32 and randread_4k_qd32_3deltas: ploopfs only; "
    "their ratios use raw randwrite_4k_qd32 (in MiB/s) and raw "
    "randread_4k_qd32.  qsd has no cow row: QEMU 7.2's parallels driver "
    "takes no backing node.",
    "cow_randwrite_4k_qd32 is time based: once every cluster has been "
    "copied up the rest of the run overwrites; the copy ratio says how "
    "much was copied.",
]
URING_NOTE = (
    "ploopfs-uring and fuse-pass-uring: ploopfs and fuse-pass served over "
    "FUSE over io_uring (ploopfs -o uring, FUSE_CEILING_URING=1; the run "
    "sets the fuse module's enable_uring=Y for them and puts it back).  "
    "ratio_uring_to_dev is each one's figure over its /dev/fuse twin's "
    "(> 1: io_uring faster); ploopfs-uring has the same goals as ploopfs, "
    "fuse-pass-uring is a reference row.")



def grid(rows, left=1, indent="  "):
    """Lines of a table: rows[0] the header, then a rule; the first
    @left columns left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        cells = [c.ljust(w) for c, w in zip(r[:left], widths[:left])]
        cells += [c.rjust(w) for c, w in zip(r[left:], widths[left:])]
        out.append(indent + "  ".join(cells))
        if n == 0:
            out.append(indent + "  ".join("-" * w for w in widths))
    return out

def load(path):
    recs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) != 4:
                raise SystemExit(f"report: bad record: {line!r}")
            recs.append(parts)
    return recs


def number(v):
    try:
        x = float(v)
    except ValueError:
        return v
    return int(x) if x.is_integer() and "." not in v else x


def value_in(jobs, name, target, want_unit):
    """A job's figure for a target, converted to want_unit (MiB/s<->IOPS at
    4 KiB), or None."""
    v = jobs.get(name, {}).get(target)
    if v is None:
        return None
    have = UNITS[name]
    if have == want_unit:
        return v
    if have == "IOPS" and want_unit == "MiB/s":
        return v * 4 / 1024
    return v * 1024 / 4


def measured(jobs, target):
    """Whether any job has a figure for target."""
    return any(target in v for v in jobs.values())


def build(recs):
    meta, jobs, details, extras, snaps = {}, {}, {}, {}, {}
    problems, failed, skipped = [], [], {}
    rounds = {}         # job -> target -> [(round, figure)]
    cur = 1             # records before any "round" record: one round
    for kind, key, target, value in recs:
        if kind == "round":
            cur = int(key)
        elif kind == "meta":
            if key == "warning":
                problems.append(value)
            else:
                meta[key] = number(value)
        elif kind == "job":
            rounds.setdefault(key, {}).setdefault(target, []).append(
                (cur, float(value)))
        elif kind == "detail":
            d = details.setdefault(key, {})
            if key in SUMMED and target in d:
                d[target] += number(value)
            else:
                d[target] = number(value)
        elif kind == "extra":
            extras.setdefault(target, {})[key] = number(value)
        elif kind == "snap":
            snaps.setdefault(target, {})[key] = number(value)
        elif kind == "problem":
            problems.append(f"{key} ({target})" if target != "all" else key)
        elif kind == "failed":
            failed.append(key)
        elif kind == "skipped":
            skipped[target] = key

    # each figure is the median of its rounds
    for name, by_t in rounds.items():
        jobs[name] = {t: median(v for _, v in rv) for t, rv in by_t.items()}

    out_jobs = {}
    for name, unit, goal, ref in JOBS:
        refname = ref or name
        vals = jobs.get(name, {})
        entry = {"unit": unit, "values": {t: vals.get(t) for t in TARGETS},
                 "goal_ratio_to_raw": goal,
                 "ratio_to_raw": {}, "ratio_to_qsd": {},
                 "ratio_to_fuse_null": {}, "ratio_to_fuse_pass": {},
                 "ratio_uring_to_dev": {}, "ratio_to_fuse_pass_uring": {}}
        if ref:
            entry["reference_job"] = ref
        raw = value_in(jobs, refname, "raw", unit)
        qsd = value_in(jobs, refname, "qsd", unit) if not ref else None
        for t in TARGETS:
            v = vals.get(t)
            if v is None:
                continue
            if t != "raw" and raw:
                entry["ratio_to_raw"][t] = round(v / raw, 3)
            if t in OURS + ["ploopfs-uring"] and qsd:
                entry["ratio_to_qsd"][t] = round(v / qsd, 3)
        # ploopfs over the FUSE ceilings (the cow and 3-delta rows over
        # their reference job, as for raw)
        pfs = vals.get("ploopfs")
        for c in CEILINGS:
            cv = value_in(jobs, refname, c, unit)
            if pfs is not None and cv:
                entry["ratio_to_" + c.replace("-", "_")]["ploopfs"] = \
                    round(pfs / cv, 3)
        # the transports: each -uring target over its /dev/fuse twin, and
        # ploopfs over the pass-through, both over io_uring
        for u, dev in URING.items():
            uv, dv = vals.get(u), vals.get(dev)
            if uv is not None and dv:
                entry["ratio_uring_to_dev"][u] = round(uv / dv, 3)
        pu = value_in(jobs, refname, "fuse-pass-uring", unit)
        if vals.get("ploopfs-uring") is not None and pu:
            entry["ratio_to_fuse_pass_uring"]["ploopfs-uring"] = \
                round(vals["ploopfs-uring"] / pu, 3)
        # every round's figures, and ours over raw's of the same round
        by_t = rounds.get(name, {})
        entry["rounds"] = {t: [v for _, v in by_t[t]]
                           for t in TARGETS if t in by_t}
        # raw of each round, in this job's unit
        raw_r = {r: value_in({refname: {"raw": v}}, refname, "raw", unit)
                 for r, v in rounds.get(refname, {}).get("raw", [])}
        entry["ratio_to_raw_by_round"] = {}
        for t in OURS + ["ploopfs-uring"]:
            rr = [round(v / raw_r[r], 3)
                  for r, v in by_t.get(t, []) if raw_r.get(r)]
            if rr:
                entry["ratio_to_raw_by_round"][t] = rr
        if name in WRITE_JOBS:
            entry["qsd_untrustworthy"] = True
        out_jobs[name] = entry

    fsync = {}
    mount = {}
    for label, d in extras.items():
        if "fdatasync" in d:
            fsync[label] = d
        else:
            mount[label] = d
    cow = {k[len("cow_"):]: v.get("ploopfs")
           for k, v in details.items() if k.startswith("cow_")}
    problems = list(dict.fromkeys(problems))    # once each, in order
    uring_run = [u for u in URING if measured(jobs, u)]
    return {
        "meta": meta,
        "targets": TARGETS,
        "reference_targets": REFERENCE,
        "measured_targets": [t for t in TARGETS if measured(jobs, t)],
        "uring_pairs": URING,
        "jobs": out_jobs,
        "seqwrite_passes": details.get("seqwrite_passes", {}),
        "ring_requests": details.get("ring_requests", {}),
        "cow_ploopfs": cow,
        "mount": mount,
        "fsync": fsync,
        "snapshots": snapshots(snaps),
        "problems": problems,
        "failed": failed,
        "skipped": skipped,
        "notes": NOTES + ([URING_NOTE] if uring_run else []),
    }


def snapshots(snaps):
    """The snapshot benchmarks: rotation stall (phases baseline and
    rotating, keys without their rot_ prefix, latencies in us) and merge
    throughput (offline, online, cp; MiB/s, seconds, ratio to cp)."""
    rotation = {}
    for phase in ("baseline", "rotating"):
        d = snaps.get(phase, {})
        if d:
            rotation[phase] = {k[len("rot_"):]: v for k, v in d.items()
                               if k.startswith("rot_")}
    merge = {}
    for mode in ("offline", "online", "cp"):
        d = snaps.get(mode, {})
        if d:
            merge[mode] = {k[len("merge_"):]: v for k, v in d.items()
                           if k.startswith("merge_")}
    cp = merge.get("cp", {}).get("mibs")
    if merge:
        merge["mib"] = snaps.get("all", {}).get("merge_mb")
        merge["ratio_to_cp"] = {
            m: round(merge[m]["mibs"] / cp, 3) for m in ("offline", "online")
            if cp and m in merge and merge[m].get("mibs")}
    return {"rotation": rotation, "merge": merge}


def snapshot_table(res):
    """Lines of the snapshot part of the table (none if not measured)."""
    lines = []
    m = res["meta"]
    rot = res["snapshots"]["rotation"]

    def ms(v):
        return "-" if v is None else f"{v / 1000:.2f}"

    if rot:
        lines.append("")
        lines.append(
            f"snapshot rotation: fio randwrite 4k qd32 + randread 4k qd8, "
            f"{m.get('rot_runtime_s')} s over {m.get('rot_size_mb')} MiB "
            f"(every cluster written first); rotating = a snapshot every "
            f"second, the oldest deleted beyond {m.get('rot_keep')}")
        head = ["", "w IOPS", "w p50", "w p99", "w p99.9", "w max",
                "r IOPS", "r p50", "r p99", "r p99.9", "r max",
                "daemon stall max"]
        rows = [head]
        for phase in ("baseline", "rotating"):
            d = rot.get(phase)
            if not d:
                continue
            row = [phase]
            for io in ("write", "read"):
                iops = d.get(f"{io}_iops")
                row.append("-" if iops is None else f"{iops:.0f}")
                for p in ("p50", "p99", "p999", "max"):
                    row.append(ms(d.get(f"{io}_{p}_us")))
            row.append(ms(d.get("daemon_stall_max_us")))
            rows.append(row)
        lines += grid(rows)
        lines.append("  latencies: completion latency (fio clat) in ms; "
                     "daemon stall: longest freeze of the mount "
                     "(ploopctl status stall_max_us), ms")
        d = rot.get("rotating", {})
        if d:
            lines.append(
                f"  rotating: {d.get('snapshots')} snapshots (mean "
                f"{d.get('snapshot_ms_mean')} ms, max "
                f"{d.get('snapshot_ms_max')} ms), {d.get('deletes')} deletes "
                f"(mean {d.get('delete_ms_mean')} ms, max "
                f"{d.get('delete_ms_max')} ms, mean "
                f"{d.get('delete_mibs_mean')} MiB/s merged, longest stall "
                f"{d.get('delete_stall_max_us')} us); "
                f"{d.get('daemon_freezes')} freezes in the mount")
        b, r = rot.get("baseline", {}), rot.get("rotating", {})
        for io in ("write", "read"):
            if b.get(f"{io}_p99_us") and r.get(f"{io}_p99_us"):
                lines.append(
                    f"  {io}s: p99 x{r[io + '_p99_us'] / b[io + '_p99_us']:.1f}"
                    f", max x{r[io + '_max_us'] / max(b[io + '_max_us'], 1):.1f}"
                    f", IOPS x{r[io + '_iops'] / max(b[io + '_iops'], 1):.2f}"
                    f" while rotating")
    mg = res["snapshots"]["merge"]
    if mg:
        lines.append("")
        lines.append(
            f"merge: snapshot-delete of a snapshot whose child holds "
            f"{mg.get('mib')} MiB of new data (copied into the snapshot's "
            f"file), offline and through the daemon of an idle mount, next "
            f"to cp + fsync of a {mg.get('mib')} MiB file on the same file "
            f"system")
        rows = [["", "MiB/s", "seconds", "ratio to cp", "own MiB/s",
                 "stall us"]]
        for mode in ("offline", "online", "cp"):
            d = mg.get(mode)
            if not d:
                continue
            r = mg["ratio_to_cp"].get(mode)
            rows.append([
                "cp + fsync" if mode == "cp" else mode,
                f"{d.get('mibs', 0):.1f}", f"{d.get('s', 0):.2f}",
                "-" if r is None else f"{r:.2f}",
                str(d.get("tool_mibs", "-")), str(d.get("stall_us", "-"))])
        lines += grid(rows)
        lines.append("  MiB/s and seconds: wall time of the command (cp: cp "
                     "and fsync); own MiB/s: what snapshot-delete reports "
                     "for its copy")
    return lines


def shown(res):
    """The targets of the table and chart: all of the original seven, the
    io_uring ones when measured."""
    return [t for t in TARGETS
            if t not in URING or t in res.get("measured_targets", [])]


def goal_cell(r, goal):
    """A ratio to raw, marked * below the goal."""
    if r is None:
        return "-"
    s = f"{r:.2f}"
    if goal and r < goal:
        if float(s) >= goal:    # 0.597 is not "0.60"
            s = f"{r:.3f}"
        s += "*"
    return s


def fmt(v, unit):
    if v is None:
        return "-"
    if unit == "IOPS" or v >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}"


def ceiling_table(res):
    """Lines of the FUSE ceilings' table: fuse-null and fuse-pass over
    raw, ploopfs over each of them (none if neither was measured)."""
    if not any(res["jobs"][name]["values"].get(c) is not None
               for name, _, _, _ in JOBS for c in CEILINGS):
        return []
    head = ["job", "null/raw", "pass/raw", "pfs/null", "pfs/pass"]
    rows = [head]
    for name, _, _, ref in JOBS:
        e = res["jobs"][name]
        row = [name + (f" (vs {ref})" if ref else "")]
        for c in CEILINGS:
            r = e["ratio_to_raw"].get(c)
            row.append("-" if r is None else f"{r:.2f}")
        for c in CEILINGS:
            r = e["ratio_to_" + c.replace("-", "_")].get("ploopfs")
            row.append("-" if r is None else f"{r:.2f}")
        if all(c == "-" for c in row[1:]):
            continue
        rows.append(row)
    return ["", "FUSE ceilings (reference, not judged): fuse-null and "
            "fuse-pass over raw, ploopfs over each of them"] + grid(rows)


def uring_table(res):
    """Lines of the transport table: FUSE over io_uring next to /dev/fuse
    (none if no -uring target was measured)."""
    run = [u for u in URING if u in res.get("measured_targets", [])]
    if not run:
        return []
    head = ["job", "pfs/raw", "pfs-ur/raw", "pfs-ur/pfs", "pass-ur/pass",
            "pfs-ur/pass-ur", "goal"]
    rows = [head]
    for name, _, goal, ref in JOBS:
        e = res["jobs"][name]
        row = [name + (f" (vs {ref})" if ref else ""),
               goal_cell(e["ratio_to_raw"].get("ploopfs"), goal),
               goal_cell(e["ratio_to_raw"].get("ploopfs-uring"), goal)]
        for r in (e["ratio_uring_to_dev"].get("ploopfs-uring"),
                  e["ratio_uring_to_dev"].get("fuse-pass-uring"),
                  e["ratio_to_fuse_pass_uring"].get("ploopfs-uring")):
            row.append("-" if r is None else f"{r:.2f}")
        if all(c == "-" for c in row[1:]):
            continue
        row.append(f">={goal}" if goal else "")
        rows.append(row)
    return ["", "FUSE over io_uring next to /dev/fuse (same jobs, same run): "
            "pfs-ur = ploopfs-uring, pass-ur = fuse-pass-uring; "
            "x-ur/x > 1: io_uring faster; * below the goal"] + grid(rows)


def rounds_table(res):
    """Lines of the per-round table: raw's figure and ploopfs's ratios to
    raw of the same round, for the jobs measured in more than one round
    (none after a single round)."""
    rows = [["job", "raw by round", "pfs/raw by round",
             "pfs-ur/raw by round", "goal"]]
    for name, unit, goal, _ in JOBS:
        e = res["jobs"][name]
        raw = e.get("rounds", {}).get("raw", [])
        if len(raw) < 2:
            continue
        by = e.get("ratio_to_raw_by_round", {})
        row = [name, " ".join(fmt(v, unit) for v in raw)]
        for t in ("ploopfs", "ploopfs-uring"):
            row.append(" ".join(goal_cell(r, goal) for r in by.get(t, []))
                       or "-")
        row.append(f">={goal}" if goal else "")
        rows.append(row)
    if len(rows) == 1:
        return []
    return ["", "Rounds (the table above gives medians): raw's figure in "
            "each round, and ploopfs's over raw's of the same round; "
            "* below the goal"] + grid(rows)


def table(res):
    lines = []
    m = res["meta"]
    lines.append(
        f"ploopfs benchmarks {m.get('timestamp', '')}: "
        f"{m.get('size_mb')} MiB, {m.get('runtime_s')} s per job, "
        f"median of {m.get('rounds', 1)} round(s), "
        f"{m.get('work_fs')}, {m.get('cpus')} CPUs, kernel {m.get('kernel')}, "
        f"{m.get('fio')}, {m.get('qemu')}, ploopfs {m.get('ploopfs_commit')}")
    lines.append("")
    cols = shown(res)
    head = ["job", "unit"] + cols + [
        "pfs/raw", "pfs/qsd", "loop-pfs/raw", "loop-pfs/qsd", "goal"]
    rows = [head]
    for name, unit, goal, _ in JOBS:
        e = res["jobs"][name]
        row = [name, unit]
        for t in cols:
            s = fmt(e["values"][t], unit)
            if t == "qsd" and name in WRITE_JOBS and e["values"][t] is not None:
                s += "+"
            row.append(s)
        for t in OURS:
            for kind in ("ratio_to_raw", "ratio_to_qsd"):
                r = e[kind].get(t)
                s = "-" if r is None else f"{r:.2f}"
                if kind == "ratio_to_raw":
                    s = goal_cell(r, goal)
                if kind == "ratio_to_qsd" and r is not None \
                        and name in WRITE_JOBS:
                    s += "+"
                row.append(s)
        row.append(f">={goal}" if goal else "")
        rows.append(row)
    lines += grid(rows, left=2, indent="")
    lines.append("")
    lines.append("pfs = ploopfs.  Ratios: ploopfs and loop-ploopfs over raw "
                 "and over qsd; goal = design target for the ratio to raw; "
                 "* below the goal.")
    lines.append("+ qsd write figure: not trustworthy, qemu-storage-daemon "
                 "7.2 corrupts data under concurrent O_DIRECT writes.")
    for n in res["notes"]:
        if not n.startswith("qsd:"):
            lines.append("- " + n)
    lines += rounds_table(res)
    lines += ceiling_table(res)
    lines += uring_table(res)

    lines.append("")
    passes = res["seqwrite_passes"]
    if passes:
        lines.append("seqwrite fresh passes: " + ", ".join(
            f"{t} {passes[t]}" for t in TARGETS if t in passes))
    reqs = res.get("ring_requests", {})
    if reqs:
        lines.append("requests over io_uring (all mounts of the target): " +
                     ", ".join(f"{t} {reqs[t]}" for t in TARGETS
                               if t in reqs))
    cow = res["cow_ploopfs"]
    if cow:
        lines.append(
            "cow (ploopfs): {} bytes written, {} clusters copied up = {} "
            "bytes; {} bytes copied per byte written".format(
                cow.get("bytes_written"), cow.get("clusters_copied"),
                cow.get("bytes_copied"), cow.get("copied_per_written")))
    for label, d in res["mount"].items():
        extra = ""
        if "allocated_clusters" in d:
            extra = (f", {d['allocated_clusters']} clusters allocated "
                     f"in {d.get('prep_ms')} ms")
        if "host_mib" in d:
            extra += (f"; on an ext4 on a sparse file (loop device), which "
                      f"took {d['host_mib']} MiB of the host")
        if "init_ms" in d:
            extra = f", ploopctl init {d['init_ms']} ms"
        lines.append(
            f"mount {label}: {d.get('mount_ms')} ms (median of "
            f"{d.get('mount_ms_all')} ms); daemon VmRSS {d.get('mount_rss_kib')}"
            f" KiB after mount, {d.get('reads_rss_kib')} KiB after 4096 "
            f"reads (VmHWM {d.get('reads_hwm_kib')} KiB){extra}")
    for label, d in res["fsync"].items():
        lines.append(
            f"fsync into {label.replace('_', ' ')}: {d.get('fdatasync')} "
            f"fdatasync for {d.get('client_fsyncs')} client fsyncs = "
            f"{d.get('fdatasync_per_fsync')} per fsync "
            f"(and {d.get('fsync_calls')} fsync)")
    lines += snapshot_table(res)
    if res["problems"]:
        lines.append("")
        lines.append("PROBLEMS SEEN:")
        lines += ["  " + p for p in res["problems"]]
    if res["failed"]:
        lines.append("")
        lines.append("NOT MEASURED:")
        lines += ["  " + f for f in res["failed"]]
    if res.get("skipped"):
        lines.append("")
        lines.append("SKIPPED (not available here, not a failure):")
        lines += [f"  {t}: {why}" for t, why in res["skipped"].items()]
    return "\n".join(lines)


def chart(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    cols = shown(res)
    bars = [t for t in ["ploopfs", "ploopfs-uring", "loop-ploopfs",
                        "loop-raw", "qsd"] if t in cols]
    colors = {"ploopfs": "#1f77b4", "ploopfs-uring": "#9467bd",
              "loop-ploopfs": "#2ca02c", "loop-raw": "#7f7f7f",
              "qsd": "#ff7f0e"}
    bar_label = {"ploopfs-uring": "ploopfs-uring (-o uring: FUSE over "
                                  "io_uring)"}
    # the FUSE ceilings: thin lines across their job's group, not bars
    ceil_style = {"fuse-null": {"color": "black", "linestyle": ":",
                                "linewidth": 1.8},
                  "fuse-pass": {"color": "#444444", "linestyle": "-.",
                                "linewidth": 1.5},
                  "fuse-pass-uring": {"color": "#8c564b",
                                      "linestyle": (0, (6, 2, 1, 2, 1, 2)),
                                      "linewidth": 1.5}}
    ceil_lines = CEILINGS + [t for t in ["fuse-pass-uring"] if t in cols]
    names = [j[0] for j in JOBS]
    nb = len(bars)
    width = 0.8 / nb
    fig, ax = plt.subplots(figsize=(16, 7.5), dpi=100)
    top = 1.2
    for name, _, _, _ in JOBS:
        for t in bars:
            r = res["jobs"][name]["ratio_to_raw"].get(t)
            if r is not None:
                top = max(top, r + 0.25)
    # ceilings far above raw (writes acknowledged without I/O) would
    # squash the bars: the scale follows them only up to 2.0, higher
    # ones are drawn as an arrow at the top with their figure
    for name, _, _, _ in JOBS:
        for t in ceil_lines:
            r = res["jobs"][name]["ratio_to_raw"].get(t)
            if r is not None:
                top = max(top, min(r + 0.15, 2.0))
    for gi, (name, _, goal, ref) in enumerate(JOBS):
        e = res["jobs"][name]
        for bi, t in enumerate(bars):
            r = e["ratio_to_raw"].get(t)
            if r is None:
                continue
            x = gi + (bi - (nb - 1) / 2) * width
            untrusted = t == "qsd" and name in WRITE_JOBS
            ax.bar(x, r, width, color=colors[t],
                   alpha=0.45 if untrusted else 1.0,
                   hatch="//" if untrusted else None, edgecolor="black",
                   linewidth=0.4)
            # the spread of the rounds' own ratios
            rr = e.get("ratio_to_raw_by_round", {}).get(t, [])
            if len(rr) > 1:
                ax.plot([x, x], [min(rr), max(rr)], color="black",
                        linewidth=0.9)
                top = max(top, max(rr) + 0.1)
            ax.text(x, max([r] + rr) + 0.02, f"{r:.2f}", ha="center",
                    va="bottom", fontsize=7, rotation=90)
            top = max(top, r + 0.25)
        half = nb / 2 * width       # half the group's width
        if goal:
            ax.plot([gi - half - 0.3 * width, gi + half + 0.3 * width],
                    [goal, goal], color="red", linestyle="--",
                    linewidth=1.5)
        for ci, t in enumerate(ceil_lines):
            r = e["ratio_to_raw"].get(t)
            if r is None:
                continue
            if r <= top - 0.05:
                ax.plot([gi - half - 0.1 * width, gi + half + 0.1 * width],
                        [r, r], **ceil_style[t])
            else:
                x = gi + (ci - (len(ceil_lines) - 1) / 2) * \
                    (0.48 if len(ceil_lines) < 3 else 0.3)
                ax.plot([x], [top - 0.03], marker="^", markersize=6,
                        color=ceil_style[t]["color"])
                ax.text(x, top - 0.07,
                        f"{t[len('fuse-'):]}\n{r:.1f}", ha="center",
                        va="top", fontsize=6.5,
                        color=ceil_style[t]["color"])
    ax.axhline(1.0, color="black", linewidth=1)
    ax.text(len(JOBS) - 0.45, 1.0, "raw = 1.0", fontsize=8, va="bottom",
            ha="right")
    labels = []
    for name, _, goal, ref in JOBS:
        label = name
        if ref:
            label += f"\n(vs raw {ref})"
        if goal:
            label += f"\ngoal >= {goal}"
        labels.append(label)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylim(0, top)
    ax.set_xlim(-0.6, len(JOBS) - 0.3)
    ax.set_ylabel("ratio to raw file (same job, same run)")
    m = res["meta"]
    what = "ploopfs, loop devices, qemu-storage-daemon, FUSE ceilings"
    if "ploopfs-uring" in bars or "fuse-pass-uring" in ceil_lines:
        what += ", FUSE over io_uring"
    ax.set_title(
        f"{what}: "
        f"throughput as a "
        f"ratio to the raw file's (fio, direct I/O, {m.get('size_mb')} MiB, {m.get('runtime_s')} s "
        f"per job, median of {m.get('rounds', 1)} round(s), {m.get('timestamp', '')})", fontsize=10)
    handles = [Patch(facecolor=colors[t], edgecolor="black",
                     label=bar_label.get(t, t))
               for t in bars]
    handles.append(Patch(facecolor=colors["qsd"], alpha=0.45, hatch="//",
                         edgecolor="black",
                         label="qsd writes: not trustworthy (QEMU 7.2 "
                               "corrupts concurrent O_DIRECT writes)"))
    handles.append(plt.Line2D([], [], color="red", linestyle="--",
                              label="goal for ploopfs (ratio to raw)"))
    if any(len(r) > 1 for n in names
           for r in res["jobs"][n].get("ratio_to_raw_by_round", {}).values()):
        handles.append(plt.Line2D(
            [], [], color="black", linewidth=0.9,
            label="bar: median; line: lowest to highest round"))
    if any(res["jobs"][n]["ratio_to_raw"].get(t) is not None
           for n in names for t in CEILINGS):
        handles.append(plt.Line2D(
            [], [], **ceil_style["fuse-null"],
            label="fuse-null: FUSE round trip alone, no I/O (^: off scale)"))
        handles.append(plt.Line2D(
            [], [], **ceil_style["fuse-pass"],
            label="fuse-pass: one sync pread/pwrite per request"))
    if "fuse-pass-uring" in ceil_lines:
        handles.append(plt.Line2D(
            [], [], **ceil_style["fuse-pass-uring"],
            label="fuse-pass-uring: fuse-pass over FUSE over io_uring"))
    ax.legend(handles=handles, fontsize=8, loc="upper center",
              bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    if len(sys.argv) != 4:
        raise SystemExit("usage: report.py RESULTS.tsv OUT.json OUT.png")
    res = build(load(sys.argv[1]))
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(res, f, indent=2, sort_keys=False)
        f.write("\n")
    print(table(res))
    chart(res, sys.argv[3])


if __name__ == "__main__":
    main()

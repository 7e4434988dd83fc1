#!/usr/bin/env python3
"""Host CPU and context switches per thread (QEMU's, the device server's) while a bench boot
runs, split by the agent's bench cells: what docs/performance.md's thread profile of the
2-vCPU cells comes from.

Usage, beside a scaling boot of `dmalab-bench`:
    rm -rf target/e2e/bench_scaling_smp2
    scripts/thread-profile.py target/e2e/bench_scaling_smp2/reports.log /tmp/profile.json &
    DMALAB_BENCH_SCALING_ONLY=smp2 cargo run --release -q -p dmalab-harness --bin dmalab-bench

Each cell in the JSON: the agent's report line, the seconds since the previous cell, and per
thread ("process|thread|tid") the CPU seconds and context switches in that time. Stops when the
agent reports it is done, or after 20 minutes."""
import json, os, sys, time
console, out = sys.argv[1], sys.argv[2]
HZ = os.sysconf('SC_CLK_TCK')
def threads():
    res = {}
    for pid in os.listdir('/proc'):
        if not pid.isdigit(): continue
        try:
            comm = open(f'/proc/{pid}/comm').read().strip()
        except OSError: continue
        if not (comm.startswith('qemu') or comm.startswith('dmalab')): continue
        try:
            for tid in os.listdir(f'/proc/{pid}/task'):
                try:
                    st = open(f'/proc/{pid}/task/{tid}/stat').read()
                    tcomm = st[st.index('(')+1:st.rindex(')')]
                    f = st[st.rindex(')')+2:].split()
                    cs = 0
                    for l in open(f'/proc/{pid}/task/{tid}/status'):
                        if 'ctxt_switches' in l: cs += int(l.split()[1])
                    res[(comm, tcomm, tid)] = (int(f[11]) + int(f[12]), cs)
                except OSError: pass
        except OSError: pass
    return res
cells = []
seen = 0
prev = threads(); tprev = time.time(); t0 = tprev
cur = {}
while time.time() - t0 < 1200:
    time.sleep(0.25)
    now = threads(); t = time.time()
    for k, v in now.items():
        p0 = prev.get(k, v)
        d, dc = v[0] - p0[0], v[1] - p0[1]
        if d or dc:
            key = f'{k[0]}|{k[1]}|{k[2]}'
            a = cur.get(key, [0, 0]); a[0] += d; a[1] += dc; cur[key] = a
    prev = now
    try:
        lines = open(console, errors='replace').read().splitlines()
    except OSError:
        continue
    new = [l for l in lines if "\"kind\":\"bench\"" in l]
    if len(new) > seen:
        for l in new[seen:]:
            cells.append({'line': l[-300:], 'secs': t - tprev, 'cpu': {k: v[0] / HZ for k, v in cur.items()}, 'cs': {k: v[1] for k, v in cur.items()}})
            cur = {}; tprev = t
        seen = len(new)
    if any("\"kind\":\"done\"" in l or "\"kind\":\"end\"" in l for l in lines[-3:]):
        break
json.dump(cells, open(out, 'w'), indent=1)
print(len(cells), 'cells')

"""What one lazyfs data blob's task costs a supernode: memory and schedule latency.

Registers PEERS peers (argv[1], default 100) on one task with the layout a peer gives an
833 MB lazyfs data blob (16 KiB pieces: 50,876 pieces), then lets each ask ten times for 4
contiguous wanted pieces (a small file's read, `sparse`) and report them. `--whole` asks as a
whole-blob download instead (no want list): O(missing pieces) per request.
Usage: python3 bench/scripts/supernode_lazy_task.py [PEERS] [--whole] (release build first).
"""
import json, subprocess, time, urllib.request, hashlib, random, os, sys
port = 18802
here = os.path.dirname(os.path.abspath(__file__))
binary = os.path.join(here, "..", "..", "target", "release", "shoal-supernode")
whole = "--whole" in sys.argv
sn = subprocess.Popen([binary, "--listen", f"127.0.0.1:{port}"], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
base = f"http://127.0.0.1:{port}/api/v1"
def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")
def rss():
    for l in open(f"/proc/{sn.pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
for _ in range(50):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz"); break
    except Exception: time.sleep(0.1)
length = 833537710; piece = 16384
n_pieces = -(-length // piece)
task = "sha256:" + hashlib.sha256(b"lazy-data").hexdigest()
r0 = rss()
args = [a for a in sys.argv[1:] if not a.startswith("--")]
peers = int(args[0]) if args else 100
for i in range(peers):
    pid = f"p{i}"
    call("POST", "/peers", {"peer_id": pid, "addr": f"10.0.{i//250}.{i%250+1}:65002"})
    call("POST", f"/tasks/{task}/peers", {"peer_id": pid, "url": "http://r/v2/x/blobs/y", "layout": {"length": length, "piece_size": piece}})
r1 = rss()
# sparse reads: each peer wants 4 random contiguous pieces, fetches, reports
lat = []
t0 = time.time()
n = 0
for rnd in range(10):
    for i in range(peers):
        pid = f"p{i}"
        start = random.randrange(0, n_pieces - 4)
        want = list(range(start, start + 4))
        t = time.time()
        rep = call("POST", f"/tasks/{task}/schedule", {"peer_id": pid, "capacity": 64, "wait_ms": 0, **({} if whole else {"want": want, "sparse": True})})
        lat.append(time.time() - t)
        done = [{"piece": a["piece"], "sha256": "sha256:" + hashlib.sha256(str(a["piece"]).encode()).hexdigest(), "from": (a["parents"][0]["peer_id"] if a["parents"] else None)} for a in rep["assignments"]]
        if done:
            call("POST", f"/tasks/{task}/reports", {"peer_id": pid, "done": done})
        n += 1
el = time.time() - t0
r2 = rss()
lat.sort()
print(json.dumps({"pieces": n_pieces, "peers": peers, "rss_kib_empty": r0, "rss_kib_registered": r1, "per_task_and_members_kib": r1 - r0, "rss_kib_after_reads": r2, "mode": "whole" if whole else "sparse", "requests": n, "schedule_p50_ms": lat[len(lat)//2]*1000, "schedule_p99_ms": lat[int(len(lat)*0.99)]*1000, "req_per_s_incl_report": n/el}))
sn.kill()

"""The miss path: each request carries a token Intercom has not seen, at a fixed rate
below the AS's limit. Per slot, three calls on kept-alive connections: the AS's own
introspection of the token, Intercom with it (a cache miss: introspection, minting,
forwarding), and the upstream directly. The figure is the paired difference per slot,
Intercom - (AS + upstream): what Intercom adds to a miss.

    python3 miss.py AS_PORT INTERCOM_PORT UPSTREAM_PORT TOKENS_FILE RATE BASIC
"""
import base64
import http.client
import statistics
import sys
import time

as_port, intercom_port, upstream_port = (int(p) for p in sys.argv[1:4])
tokens = [t.strip() for t in open(sys.argv[4]) if t.strip()]
rate = float(sys.argv[5])
basic = sys.argv[6]

def connection(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.connect()
    return c

auth_server, intercom, upstream = connection(as_port), connection(intercom_port), connection(upstream_port)

def timed(conn, method, path, body=None, headers=None):
    start = time.perf_counter_ns()
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    response.read()
    elapsed = (time.perf_counter_ns() - start) / 1e6
    if response.status != 200:
        raise SystemExit(f"{method} {path} answered {response.status}")
    return elapsed

added, as_ms, intercom_ms, direct_ms = [], [], [], []
interval = 1.0 / rate
next_slot = time.perf_counter()
for token in tokens:
    now = time.perf_counter()
    if now < next_slot:
        time.sleep(next_slot - now)
    next_slot += interval
    a = timed(auth_server, "POST", "/token/introspection", body=f"token={token}",
              headers={"Authorization": f"Basic {basic}",
                       "Content-Type": "application/x-www-form-urlencoded"})
    i = timed(intercom, "GET", "/api/miss", headers={"Authorization": f"Bearer {token}"})
    d = timed(upstream, "GET", "/miss")
    as_ms.append(a); intercom_ms.append(i); direct_ms.append(d); added.append(i - a - d)

def pct(values, q):
    return statistics.quantiles(values, n=100)[q - 1]

print(f"   {len(tokens)} fresh tokens at {rate:.0f}/s: AS introspection p50 {pct(as_ms, 50):.3f} ms, "
      f"Intercom (miss) p50 {pct(intercom_ms, 50):.3f} ms, upstream p50 {pct(direct_ms, 50):.3f} ms")
print(f"- a miss adds p50 {pct(added, 50):+.3f} ms (target ≤ +0.3 ms), "
      f"p99 {pct(added, 99):+.3f} ms (target ≤ +1 ms) over the AS's introspection and the upstream")
# Intercom's own call to the AS is a second introspection, not the one timed beside it:
# the difference's tail carries the AS's own. For scale, the same difference between two
# of the AS's own calls (each slot's against the next's), where Intercom is not involved.
jitter = [later - earlier for earlier, later in zip(as_ms, as_ms[1:])]
print(f"- for scale, one AS introspection minus another: p50 {pct(jitter, 50):+.3f} ms, "
      f"p99 {pct(jitter, 99):+.3f} ms (the AS's own tail, in the p99 above)")

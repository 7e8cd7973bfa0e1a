"""A real DNS server for the discovery tests (the `dnslib` package, pinned in
tests/requirements.txt), on UDP and TCP: it answers A and AAAA queries from a JSON file
`{"name": ["address", ...]}`, read again at every query, with a TTL of one second.

    python dns.py PORT RECORDS_FILE
"""

import json
import sys
import threading

from dnslib import AAAA, QTYPE, RR, A
from dnslib.server import BaseResolver, DNSServer


class FileResolver(BaseResolver):
    def __init__(self, path):
        self.path = path

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        with open(self.path) as f:
            addresses = json.load(f).get(name, [])
        for address in addresses:
            if ":" in address and request.q.qtype in (QTYPE.AAAA, QTYPE.ANY):
                reply.add_answer(RR(request.q.qname, QTYPE.AAAA, rdata=AAAA(address), ttl=1))
            elif ":" not in address and request.q.qtype in (QTYPE.A, QTYPE.ANY):
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=1))
        return reply


def main(port, path):
    resolver = FileResolver(path)
    for tcp in (False, True):
        DNSServer(resolver, port=port, address="127.0.0.1", tcp=tcp).start_thread()
    print("ready", flush=True)
    # The servers run on their own threads; this one only keeps the process alive.
    threading.Event().wait()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])

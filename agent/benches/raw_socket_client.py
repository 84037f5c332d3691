#!/usr/bin/env python3
"""A minimal client for latency experiments (docs/BENCHMARKS.md): one keep-alive connection to
the agent's Unix socket, requests back to back for 3 s, prints the p50 round trip.

Usage: raw_socket_client.py SOCKET [GET|POST]   (GET: /v2/health/live; POST: one iris row)
"""
import socket, time, json, sys
body=json.dumps({"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}).encode()
path = sys.argv[2] if len(sys.argv)>2 else "/v2/models/iris/infer"
if path.startswith("GET"):
    req=b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
else:
    req=b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
lat=[]
t=time.time()
while time.time()-t<3:
    a=time.perf_counter(); s.sendall(req); d=s.recv(65536); lat.append(time.perf_counter()-a)
lat.sort(); print(sys.argv[2:], "p50 us", round(lat[len(lat)//2]*1e6,1), "n", len(lat))

"""An OTLP/HTTP trace receiver for the tracing tests.

It decodes every export request with the official OpenTelemetry protobuf definitions (the
`opentelemetry-proto` package from PyPI), so what it accepts is what a real collector
accepts. It listens on 127.0.0.1 on a port of the kernel's choosing and prints
`listening <port>` once bound. Endpoints:

- `POST /v1/traces`: an `ExportTraceServiceRequest` (`application/x-protobuf`); answered with
  an empty `ExportTraceServiceResponse`, or 400 when the body does not decode and 415 for any
  other content type (as the OTLP specification says).
- `GET /spans?count=N&timeout=S`: every span received so far as JSON, once at least N have
  arrived or S seconds have passed; each span flattened with its resource attributes.

What it does not cover: gzip-compressed requests (Skiff does not compress), JSON-encoded
OTLP, and gRPC (Skiff exports over HTTP/1.1 with protobuf only).
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

SPANS = []
ARRIVED = threading.Condition()


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def flatten(request):
    out = []
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for span in ss.spans:
                out.append({
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "trace_state": span.trace_state,
                    "name": span.name,
                    "kind": trace_pb2.Span.SpanKind.Name(span.kind),
                    "start_time_unix_nano": span.start_time_unix_nano,
                    "end_time_unix_nano": span.end_time_unix_nano,
                    "flags": span.flags,
                    "attributes": attributes(span.attributes),
                    "status": {
                        "code": trace_pb2.Status.StatusCode.Name(span.status.code),
                        "message": span.status.message,
                    },
                    "scope": {"name": ss.scope.name, "version": ss.scope.version},
                    "resource": resource,
                })
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if urlparse(self.path).path != "/v1/traces":
            return self.reply(404, b"not found", "text/plain")
        if self.headers.get("content-type") != "application/x-protobuf":
            return self.reply(415, b"protobuf only", "text/plain")
        request = trace_service_pb2.ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except DecodeError as e:
            return self.reply(400, str(e).encode(), "text/plain")
        spans = flatten(request)
        with ARRIVED:
            SPANS.extend(spans)
            ARRIVED.notify_all()
        response = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.reply(200, response, "application/x-protobuf")

    def do_GET(self):
        url = urlparse(self.path)
        if url.path != "/spans":
            return self.reply(404, b"not found", "text/plain")
        query = parse_qs(url.query)
        count = int(query.get("count", ["0"])[0])
        timeout = float(query.get("timeout", ["10"])[0])
        with ARRIVED:
            ARRIVED.wait_for(lambda: len(SPANS) >= count, timeout)
            body = json.dumps(SPANS).encode()
        self.reply(200, body, "application/json")


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())

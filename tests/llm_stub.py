"""A stand-in for the LLM behind Hermes (the one fake the tests use: no model can run here).

It speaks enough of the OpenAI chat-completions API for Hermes' `provider: custom`: every POST to
.../chat/completions is recorded and answered with a fixed reply (as one JSON answer, or as
server-sent events when the request asks to stream). GET /requests returns what was recorded.

Usage: python3 llm_stub.py    prints {"base_url": "http://127.0.0.1:PORT/v1"} once it listens.
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPLY = "STUB-REPLY: noted."
RECORDED = []
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/requests":
            with LOCK:
                self._json(200, list(RECORDED))
        elif self.path.endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": "dummy-model", "object": "model"}]})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"unparsed": raw.decode(errors="replace")}
        if not self.path.endswith("/chat/completions"):
            self._json(404, {"error": {"message": "not found"}})
            return
        with LOCK:
            RECORDED.append(body)
        created = int(time.time())
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            chunks = [
                {"role": "assistant", "content": REPLY},
            ]
            for delta in chunks:
                event = {"id": "stub", "object": "chat.completion.chunk", "created": created,
                         "model": body.get("model", "dummy-model"),
                         "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            done = {"id": "stub", "object": "chat.completion.chunk", "created": created,
                    "model": body.get("model", "dummy-model"),
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
            self.wfile.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
            self.wfile.flush()
            self.close_connection = True
            return
        self._json(200, {
            "id": "stub", "object": "chat.completion", "created": created,
            "model": body.get("model", "dummy-model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    sys.stdout.write(json.dumps({"base_url": f"http://127.0.0.1:{port}/v1"}) + "\n")
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()

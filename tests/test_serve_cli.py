"""`ember serve` as a process: refuses an open non-loopback bind, and on SIGTERM stops accepting,
lets the running request finish, and exits 0."""

import http.client
import json
import os
import signal
import threading

import pytest

from server.__main__ import main
from tests.conftest import serve_process


def test_refuses_non_loopback_without_a_key(capsys):
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "without an API key" in capsys.readouterr().err


@pytest.mark.model
def test_sigterm_lets_the_running_request_finish(default_model_path):
    env = dict(os.environ, EMBER_HOME=str(default_model_path.parent.parent))
    with serve_process("--grace", "20", env=env) as (port, proc):
        result = {"started": threading.Event()}

        def stream():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            body = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 60,
                    "stream": True, "ignore_eos": True}
            conn.request("POST", "/chat/completions", json.dumps(body),
                         {"extra-parameters": "pass-through"})
            resp = conn.getresponse()
            first = resp.read1(65536)
            result["started"].set()
            result["status"], result["body"] = resp.status, first + resp.read()
            conn.close()

        t = threading.Thread(target=stream)
        t.start()
        assert result["started"].wait(30)
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert result["status"] == 200 and result["body"].endswith(b"data: [DONE]\n\n")
        assert result["body"].count(b'"content"') > 30  # it ran to the end, not cut off
        assert proc.wait(30) == 0

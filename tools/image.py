"""Build and run the production image (the repository's Dockerfile) with a real container engine.

Why this exists: the Dockerfile is the artefact that gets deployed, so the test suite builds it
and runs it (tests/container) instead of only reading it. This module does everything a fresh
machine needs, as root, and nothing more:

* gets a container engine from ``tools.engine`` (Debian's ``docker.io``, a ``dockerd`` of its
  own when none answers, stopped again afterwards);
* makes a local Debian 12 / Python 3.11 base image with ``debootstrap`` when the Python base
  image cannot be pulled, with this machine's locally added CA certificates (TLS to the package
  index goes through them here);
* builds with BuildKit (Debian's ``/usr/bin/docker``: the client first on PATH may lack it),
  with a dummy ``hf_token`` secret, and tags the image.

Registry hosts are never written down: the Debian mirror comes from this machine's apt sources
and the package index from its pip configuration, at run time.

    python -m tools.image build              # tiny weights, tag pawfect-edit-inpaint:tiny
    python -m tools.image build --weights real --secret-file token.txt --tag pawfect-edit-inpaint
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.engine import DEBOOTSTRAP, DOCKER, Engine, ImageError, log, running_engine

ROOT = Path(__file__).resolve().parent.parent
PYTHON_IMAGE = "python:3.11-slim-trixie"
LOCAL_BASE = "local/python:3.11-bookworm"
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
DEFAULT_INDEX = "https://pypi.org/simple"
DEFAULT_TAG = "pawfect-edit-inpaint:tiny"
BASE_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
)


# --- pure helpers (table-tested in tests/container/test_image_tool.py) -----------------------


def debian_mirror(sources: dict[str, str], suite: str = DEBIAN_SUITE) -> str | None:
    """The first Debian archive URI for ``suite`` in apt source files (name -> text).

    Reads one-line ``deb URI SUITE ...`` lists and deb822 ``.sources`` stanzas; security and
    non-Debian repositories are skipped, and disabled files are ignored by the caller.
    """
    for text in sources.values():
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                words = line.split()
                if words[0] == "deb":
                    uri, dist = _one_line_source(words)
                    if uri and _is_debian_archive(uri, [dist], suite):
                        return uri
                    continue
                key, sep, value = line.partition(":")
                if sep and key[:1].isalpha() and " " not in key:
                    fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "deb").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                if _is_debian_archive(uri, fields.get("suites", "").split(), suite):
                    return uri
    return None


def _one_line_source(words: list[str]) -> tuple[str | None, str]:
    rest = [w for w in words[1:] if not w.startswith("[")]
    if words[1:2] and words[1].startswith("["):  # deb [opt=val ...] URI SUITE ...
        closing = next((i for i, w in enumerate(words) if w.endswith("]")), 0)
        rest = words[closing + 1 :]
    return (rest[0], rest[1]) if len(rest) >= 2 else (None, "")


def _is_debian_archive(uri: str, suites: list[str], suite: str) -> bool:
    return (
        uri.startswith(("http://", "https://"))
        and suite in suites
        and not uri.rstrip("/").endswith("-security")
        and "/debian" in uri
    )


def pip_index_url(config: dict[str, str], env: dict[str, str]) -> str:
    """The package index this machine's pip uses: $PIP_INDEX_URL, else ``index-url`` from
    ``pip config list`` (any scope), else PyPI. ``file:`` indexes cannot serve a container."""
    candidates = [env.get("PIP_INDEX_URL", "")]
    candidates += [v for k, v in config.items() if k.endswith(".index-url")]
    for url in candidates:
        url = url.strip().strip("'\"")
        if url.startswith(("http://", "https://")):
            return url
    return DEFAULT_INDEX


def parse_pip_config(text: str) -> dict[str, str]:
    """``pip config list`` output (``scope.key='value'`` lines) as a dict."""
    parsed: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            parsed[key.strip()] = value.strip().strip("'\"")
    return parsed


def build_argv(
    *,
    tag: str,
    base: str,
    torch_index: str,
    weights: str,
    secret_file: Path | None,
    quant: str | None = None,
    weights_image: str | None = None,
    target: str | None = None,
    context: Path = ROOT,
) -> list[str]:
    """The ``docker build`` command line (host network: this engine runs without a bridge).
    ``secret_file=None``: no ``hf_token`` secret, like cloudbuild.yaml's service build."""
    argv = [str(DOCKER), "build", "--network", "host", "--progress", "plain"]
    if secret_file is not None:
        argv += ["--secret", f"id=hf_token,src={secret_file}"]
    argv += ["--build-arg", f"PYTHON_IMAGE={base}"]
    argv += ["--build-arg", f"TORCH_INDEX_URL={torch_index}"]
    argv += ["--build-arg", f"WEIGHTS={weights}"]
    if quant:
        argv += ["--build-arg", f"QUANT={quant}"]
    if weights_image:
        argv += ["--build-arg", f"WEIGHTS_IMAGE={weights_image}"]
    if target:
        argv += ["--target", target]
    return [*argv, "--tag", tag, str(context)]


def step_states(log: str) -> dict[str, str]:
    """BuildKit plain-progress log -> step title (``[stage n/m] RUN ...``) -> ``CACHED`` or
    ``DONE``. Shows which steps a build ran and which it took from the cache."""
    titles: dict[str, str] = {}
    states: dict[str, str] = {}
    for line in log.splitlines():
        match = re.match(r"#(\d+) (.*)$", line)
        if not match:
            continue
        number, text = match.groups()
        if number not in titles and text.startswith("["):
            titles[number] = text
        elif text == "CACHED" or text.startswith("DONE"):
            states[number] = "CACHED" if text == "CACHED" else "DONE"
    return {titles[n]: s for n, s in states.items() if n in titles}


def step_output(log: str, title_part: str) -> list[str]:
    """Output lines of the build steps whose title contains ``title_part`` (timestamps cut)."""
    numbers = {
        m.group(1)
        for m in re.finditer(r"^#(\d+) (\[.*)$", log, re.MULTILINE)
        if title_part in m.group(2)
    }
    lines = []
    for line in log.splitlines():
        match = re.match(r"#(\d+) \d+\.\d+ (.*)$", line)
        if match and match.group(1) in numbers:
            lines.append(match.group(2))
    return lines


# --- base image -------------------------------------------------------------------------------


def read_apt_sources() -> dict[str, str]:
    files = [Path("/etc/apt/sources.list")]
    files += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    files += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    return {str(p): p.read_text(errors="replace") for p in files if p.is_file()}


def ensure_base(engine: Engine, python_image: str = PYTHON_IMAGE) -> str:
    """The base image to build FROM: the Python image if present or pullable, else the local
    Debian 12 / Python 3.11 base (made once; it stays in the engine's data root)."""
    for ref in (python_image, LOCAL_BASE):
        if engine.has_image(ref):
            return ref
    try:
        if engine.docker("pull", "-q", python_image, check=False, timeout=60).returncode == 0:
            return python_image
    except subprocess.TimeoutExpired:
        pass
    make_local_base(engine)
    return LOCAL_BASE


def make_local_base(engine: Engine, tag: str = LOCAL_BASE) -> None:
    """debootstrap Debian with Python 3.11 from Debian's packages, add this machine's local CA
    certificates, and import it as ``tag``."""
    mirror = debian_mirror(read_apt_sources())
    if not mirror:
        raise ImageError(f"no Debian {DEBIAN_SUITE} mirror found in this machine's apt sources")
    log(f"making {tag} with debootstrap ({DEBIAN_SUITE})")
    with tempfile.TemporaryDirectory(prefix="inpaint-rootfs-", dir=engine.data_root.parent) as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            [
                str(DEBOOTSTRAP),
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
                mirror,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        ca_dir = rootfs / LOCAL_CA_DIR.relative_to("/")
        for cert in sorted(LOCAL_CA_DIR.glob("**/*.crt")) if LOCAL_CA_DIR.is_dir() else []:
            shutil.copy2(cert, ca_dir / cert.name)
        subprocess.run(
            ["chroot", str(rootfs), "update-ca-certificates"], check=True, capture_output=True
        )
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        tar = Path(tmp) / "rootfs.tar"
        subprocess.run(
            ["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tar), "."], check=True
        )
        changes = [f"--change=ENV {e}" for e in BASE_ENV] + ['--change=CMD ["python3"]']
        engine.docker("import", *changes, str(tar), tag, timeout=600)


# --- build --------------------------------------------------------------------------------------


@dataclass
class BuildResult:
    tag: str
    log: str
    seconds: float


def build(
    engine: Engine,
    *,
    tag: str = DEFAULT_TAG,
    weights: str = "tiny",
    secret_file: Path | None = None,
    quant: str | None = None,
    weights_image: str | None = None,
    target: str | None = None,
    context: Path = ROOT,
    base: str | None = None,
    echo: bool = False,
    secret: bool = True,
) -> BuildResult:
    """Builds the Dockerfile in ``context`` and tags it; raises ImageError with the log tail.
    ``echo`` copies the build's progress to stderr as it comes; ``secret=False`` passes no
    ``hf_token`` secret at all (otherwise ``secret_file``, or a dummy one)."""
    base = base or ensure_base(engine)
    config = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    index = pip_index_url(parse_pip_config(config), dict(os.environ))
    with contextlib.ExitStack() as stack:
        if secret_file is None and secret:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="inpaint-secret-"))
            secret_file = Path(tmp) / "hf_token"
            secret_file.write_text("dummy-token-for-local-builds\n")
        argv = build_argv(
            tag=tag,
            base=base,
            torch_index=index,
            weights=weights,
            secret_file=secret_file,
            quant=quant,
            weights_image=weights_image,
            target=target,
            context=context,
        )
        started = time.monotonic()
        lines: list[str] = []
        proc = subprocess.Popen(
            argv,
            env=engine.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=context,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if echo:
                sys.stderr.write(line)
        returncode = proc.wait()
        seconds = time.monotonic() - started
    log = "".join(lines)
    if returncode != 0:
        raise ImageError(f"docker build failed ({' '.join(argv)}):\n{log[-6000:]}")
    return BuildResult(tag=tag, log=log, seconds=seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.image", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("build", help="start an engine if needed, prepare the base, build")
    cmd.add_argument("--weights", choices=("tiny", "real", "image"), default="tiny")
    cmd.add_argument("--tag", default=DEFAULT_TAG)
    cmd.add_argument("--quant", help="QUANT build arg (default: the Dockerfile's)")
    cmd.add_argument("--secret-file", type=Path, help="hf_token secret (default: a dummy)")
    cmd.add_argument("--weights-image", help="WEIGHTS_IMAGE build arg (with --weights image)")
    cmd.add_argument("--target", help="build only up to this stage")
    cmd.add_argument("--log", type=Path, help="also write the build log here")
    args = parser.parse_args(argv)
    try:
        with running_engine() as engine:
            result = build(
                engine,
                tag=args.tag,
                weights=args.weights,
                secret_file=args.secret_file,
                quant=args.quant,
                weights_image=args.weights_image,
                target=args.target,
                echo=True,
            )
            size = engine.docker("image", "inspect", "--format", "{{.Size}}", args.tag).stdout
    except (ImageError, subprocess.CalledProcessError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    if args.log:
        args.log.write_text(result.log)
    ran = [
        t
        for t, s in step_states(result.log).items()
        if s == "DONE" and not t.startswith("[internal]") and " FROM " not in t
    ]
    log(f"built {result.tag} in {result.seconds:.1f} s ({int(size) / 1e9:.2f} GB); ran {ran}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

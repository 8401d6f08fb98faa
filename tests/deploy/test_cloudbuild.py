"""cloudbuild.yaml (and the gcloud commands of docs/runbook.md) against the contract and gcloud.

Every gcloud flag is checked against ``gcloud <command> --help`` of the installed gcloud, which
works offline. Help texts are cached per command for the session (one call takes ~1 s).
"""

from __future__ import annotations

import os
import re
import runpy
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.deploy.common import setting_env_names

ROOT = Path(__file__).resolve().parents[2]
CLOUDBUILD = ROOT / "cloudbuild.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
GCLOUD = shutil.which("gcloud")
needs_gcloud = pytest.mark.skipif(GCLOUD is None, reason="gcloud is not installed")

# Built-in substitutions of Cloud Build (values here are stand-ins for resolving strings).
BUILTINS = {
    "PROJECT_ID": "my-project",
    "BUILD_ID": "0f1e2d3c-build",
    "PROJECT_NUMBER": "123456789012",
    "LOCATION": "global",
    "TRIGGER_NAME": "",
    "COMMIT_SHA": "",
    "REVISION_ID": "",
    "SHORT_SHA": "",
    "REPO_NAME": "",
    "REPO_FULL_NAME": "",
    "BRANCH_NAME": "",
    "TAG_NAME": "",
    "REF_NAME": "",
    "TRIGGER_BUILD_CONFIG_PATH": "",
    "SERVICE_ACCOUNT_EMAIL": "",
    "SERVICE_ACCOUNT": "",
}
CONTRACT = {"_REGION": "us-east4", "_SERVICE": "pawfect-edit-inpaint", "_MAX_INSTANCES": "1"}
REQUIRED_SUBSTITUTIONS = {"_REGION", "_SERVICE", "_REPOSITORY", "_BUCKET", "_MAX_INSTANCES"}
_REF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


# --- cloudbuild.yaml helpers ------------------------------------------------------------------


@cache
def config() -> dict:
    return yaml.safe_load(CLOUDBUILD.read_text())


def step(step_id: str) -> dict:
    matches = [s for s in config()["steps"] if s.get("id") == step_id]
    assert len(matches) == 1, f"one step with id {step_id!r}"
    return matches[0]


def strings(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in strings(value)]
    return []


def references(text: str) -> list[str]:
    """Names Cloud Build substitutes in ``text`` (``$$`` is an escaped dollar)."""
    return [a or b for a, b in _REF.findall(text.replace("$$", ""))]


def resolve(text: str) -> str:
    values = BUILTINS | {k: str(v) for k, v in config()["substitutions"].items()}
    escaped = text.replace("$$", "\0")
    return _REF.sub(lambda m: values[m.group(1) or m.group(2)], escaped).replace("\0", "$")


def flag_values(args: list[str]) -> dict[str, str | None]:
    """``--name=value`` / ``--name`` arguments (this file always joins values with ``=``)."""
    values: dict[str, str | None] = {}
    for arg in args:
        if arg.startswith("--"):
            name, sep, value = arg[2:].partition("=")
            assert name not in values, f"--{name} given twice"
            values[name] = value if sep else None
    return values


def key_values(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(","))


def deploy_args(gpu: str | None = None) -> list[str]:
    """The ``gcloud run deploy`` arguments that the deploy step's ``tools/deploy.py service``
    runs for ``gpu`` (default: the step's ``_GPU``), with Cloud Build's placeholders in place."""
    from tools.deploy import GPU_PROFILES, run_deploy_argv

    deploy = step("deploy")
    assert deploy.get("entrypoint") == "python3"
    assert deploy["args"][:2] == ["tools/deploy.py", "service"]
    values = flag_values(deploy["args"][2:])
    profile = GPU_PROFILES[gpu or resolve(values["gpu"])]
    return run_deploy_argv(
        profile,
        service=values["service"],
        image=values["image"],
        region=values["region"],
        project=values["project"],
        max_instances=values["max-instances"],
        runtime_service_account=values["runtime-service-account"],
        bucket=values["bucket"],
        ack_deadline=values["ack-deadline"],
        max_delivery_attempts=values["max-delivery-attempts"],
    )


def image_repository() -> str:
    return "{_REGION}-docker.pkg.dev/{PROJECT_ID}/{_REPOSITORY}/{_SERVICE}".format(
        **BUILTINS, **config()["substitutions"]
    )


def build_script_words() -> list[str]:
    build = step("build")
    assert build.get("entrypoint") == "bash" and build["args"][0] == "-c"
    script = build["args"][1].replace("\\\n", " ")
    return shlex.split(script, comments=True)


def docker_builds() -> list[list[tuple[str, str]]]:
    """The options of every ``docker build`` in the build step's script, in order."""
    words = build_script_words()
    builds = []
    for start in [i for i in range(len(words)) if words[i : i + 2] == ["docker", "build"]]:
        options, rest = [], words[start + 2 :]
        while rest and rest[0].startswith("-"):
            options.append((rest[0], rest[1]))
            rest = rest[2:]
        assert rest[:1] == ["."], f"build context: {rest[:3]}"
        builds.append(options)
    return builds


def docker_build_options() -> list[tuple[str, str]]:
    """The build of the service image (the one tagged with $BUILD_ID)."""
    (final,) = [b for b in docker_builds() if any("$BUILD_ID" in v for _, v in b)]
    return final


def weights_build_options() -> list[tuple[str, str]]:
    """The build of the weights image (``--target weights-real``)."""
    (weights,) = [b for b in docker_builds() if ("--target", "weights-real") in b]
    return weights


# --- gcloud help ------------------------------------------------------------------------------

_ENV = os.environ | {
    "TERM": "dumb",
    "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
    "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "1",
}


@dataclass(frozen=True)
class Help:
    path: tuple[str, ...]  # the command, e.g. ("run", "deploy")
    is_group: bool
    flags: frozenset[str]
    text: str

    def section(self, flag: str) -> str:
        """The description of ``--flag`` (up to the next flag definition)."""
        flags_at = self.text.index("\nFLAGS\n")
        start = re.compile(rf"^\s+--{re.escape(flag)}[=\s]", re.M).search(self.text, flags_at)
        assert start, f"--{flag} is not described"
        end = re.compile(r"^\s+--", re.M).search(self.text, start.end())
        return self.text[start.end() : end.start() if end else None]


@cache
def gcloud_help(words: tuple[str, ...]) -> Help:
    """Help of the command that ``gcloud WORDS`` names (WORDS may end in positionals)."""
    proc = subprocess.run(
        [GCLOUD, *words, "--help"], capture_output=True, text=True, env=_ENV, timeout=120
    )
    assert proc.returncode == 0, f"gcloud {' '.join(words)}: {proc.stderr.strip()}"
    text = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout)
    name = re.search(r"^NAME\n\s+gcloud ([a-z0-9 -]+?) - ", text, re.M)
    assert name, f"no NAME in the help of gcloud {' '.join(words)}"
    flags = set()
    for negatable, flag in re.findall(r"^\s+--(\[no-\])?([a-z0-9][a-z0-9-]*)", text, re.M):
        flags |= {flag, f"no-{flag}"} if negatable else {flag}
    wide = re.search(r"^GCLOUD WIDE FLAGS\n(.*?)\n\n", text, re.M | re.S)
    if wide:
        flags |= set(re.findall(r"--([a-z0-9][a-z0-9-]*)", wide.group(1)))
    is_group = bool(re.search(r"^(GROUPS|COMMANDS)$", text, re.M))
    return Help(tuple(name.group(1).split()), is_group, frozenset(flags), text)


def command_words(args: list[str]) -> tuple[str, ...]:
    """The words before the first flag, cut at the first one that cannot be a command name."""
    words = []
    for arg in args:
        if arg.startswith("-") or not re.fullmatch(r"[a-z][a-z0-9-]*", arg):
            break
        words.append(arg)
    return tuple(words)


@cache
def cli_tree() -> dict | None:
    """gcloud's static command tree (commands, flags, choices), shipped for shell completion.
    Loading it once (~1 s) is much faster than one ``--help`` per command."""
    if GCLOUD is None:
        return None
    path = Path(os.path.realpath(GCLOUD)).parent.parent / "data/cli/gcloud_completions.py"
    if not path.is_file():
        return None
    return runpy.run_path(str(path))["STATIC_COMPLETION_CLI_TREE"]


def check_gcloud_invocation(args: list[str], where: str, *, always_help: bool) -> list[str]:
    """Problems with ``gcloud ARGS``: not a command, unknown flags, values outside the choices.

    Flags are looked up in gcloud's command tree; ``--help`` decides whenever the tree does
    not know a flag (and always with ``always_help``).
    """
    tree, problems = cli_tree(), []
    node, path = tree, []
    if tree is not None:
        for word in args:
            if word.startswith("-") or word not in node["commands"]:
                break
            node, path = node["commands"][word], [*path, word]
        if not path or node["commands"]:
            return [f"{where}: `gcloud {' '.join(command_words(args))}` is not a gcloud command"]
    helped = gcloud_help(command_words(args)) if always_help or tree is None else None
    if helped is not None:
        if helped.is_group or tuple(args[: len(helped.path)]) != helped.path:
            problems.append(f"{where}: `gcloud {' '.join(helped.path)}` is not a gcloud command")
        path = list(helped.path)
    known = {**tree["flags"], **node["flags"]} if tree is not None else {}
    for name, value in flag_values([a for a in args if a.startswith("--")]).items():
        choices = known.get(f"--{name}")
        if isinstance(choices, list) and value is not None and value not in choices:
            problems.append(f"{where}: --{name}={value} is not one of {choices}")
        if f"--{name}" in known and not name.startswith("no-") and helped is None:
            continue
        helped = helped or gcloud_help(command_words(args))
        if name not in helped.flags:
            problems.append(f"{where}: `gcloud {' '.join(path)}` has no flag --{name}")
    return problems


# --- structure ----------------------------------------------------------------------------------


def test_required_top_level_fields():
    cb = config()
    assert cb["options"]["machineType"] == "E2_HIGHCPU_32"
    assert int(cb["options"]["diskSizeGb"]) >= 200, "weights stage + image need the room"
    assert re.fullmatch(r"\d+s", cb["timeout"]) and int(cb["timeout"][:-1]) >= 3600
    assert cb["availableSecrets"]["secretManager"]
    assert cb["images"] or any("push" in s.get("args", []) for s in cb["steps"])


def test_steps_have_unique_ids_and_run_in_order():
    ids = [s.get("id") for s in config()["steps"]]
    assert all(ids), "every step has an id"
    assert len(set(ids)) == len(ids)
    assert [i for i in ids if i in ("build", "push", "deploy")] == ["build", "push", "deploy"]
    assert not any("waitFor" in s for s in config()["steps"]), "steps run one after the other"


def test_substitutions_are_defined_used_and_default_to_the_contract():
    subs = config()["substitutions"]
    assert set(subs) >= REQUIRED_SUBSTITUTIONS
    assert all(re.fullmatch(r"_[A-Z0-9_]+", k) for k in subs)
    for key, value in CONTRACT.items():
        assert str(subs[key]) == value
    used = {
        name
        for text in strings(config()["steps"] + config()["images"])
        for name in references(text)
    }
    used |= {n for t in strings(config()["availableSecrets"]) for n in references(t)}
    assert used - set(subs) - set(BUILTINS) == set(), (
        "unknown substitutions (a bash variable must be written $$NAME)"
    )
    assert set(subs) - used == set(), "unused substitutions"


# --- the token ----------------------------------------------------------------------------------


def test_hf_token_comes_from_secret_manager_into_the_build_step_only():
    secrets = config()["availableSecrets"]["secretManager"]
    (entry,) = [s for s in secrets if s["env"] == "HF_TOKEN"]
    assert re.fullmatch(
        r"projects/\$PROJECT_ID/secrets/HF_TOKEN/versions/\w+", entry["versionName"]
    )
    users = [s["id"] for s in config()["steps"] if "HF_TOKEN" in s.get("secretEnv", [])]
    assert users == ["build"]
    for s in config()["steps"]:
        for env in s.get("env", []):
            assert "TOKEN" not in env.upper(), f"step {s['id']}: secret in env {env!r}"
        if s["id"] != "build":
            assert "HF_TOKEN" not in " ".join(strings(s)), f"step {s['id']} mentions HF_TOKEN"


def test_token_reaches_docker_as_a_buildkit_secret_only():
    build = step("build")
    assert "DOCKER_BUILDKIT=1" in build.get("env", [])
    assert not [o for o, _ in docker_build_options() if o == "--secret"], (
        "the service image's build downloads nothing: it needs no secret"
    )
    options = weights_build_options()
    secrets = [key_values(v) for o, v in options if o == "--secret"]
    assert len(secrets) == 1 and secrets[0]["id"] == "hf_token"
    for option, value in [o for b in docker_builds() for o in b]:
        if option == "--build-arg":
            name = value.split("=")[0].upper()
            assert not any(w in name for w in ("TOKEN", "SECRET", "KEY", "PASSWORD", "CREDENT"))
    script = build["args"][1]
    assert not re.search(r"set\s+-\w*x|xtrace", script), "tracing would print the token"
    if "src" in secrets[0]:
        path = secrets[0]["src"]
        assert path.startswith("/dev/shm/"), "the token file stays in memory (tmpfs)"
        assert "umask 077" in script
        assert re.search(rf"trap '[^']*rm -f {re.escape(path)}[^']*' EXIT", script)
        assert f'"$$HF_TOKEN" > {path}' in script
    else:
        assert secrets[0].get("env") == "HF_TOKEN"


def test_build_tags_push_and_deploy_the_same_image():
    repository = image_repository()
    options = docker_build_options()
    tags = [resolve(v) for o, v in options if o in ("--tag", "-t")]
    image = f"{repository}:{BUILTINS['BUILD_ID']}"
    assert image in tags
    build_args = [resolve(v) for o, v in options if o == "--build-arg"]
    assert "QUANT=Q4_0" in build_args
    push = step("push")
    assert [resolve(a) for a in push["args"]] in (
        ["push", "--all-tags", repository],
        ["push", image],
    )
    assert image in [resolve(i) for i in config()["images"]]
    assert resolve(flag_values(deploy_args())["image"]) == image
    assert repository.startswith("us-east4-docker.pkg.dev/my-project/")


def test_weights_are_downloaded_once_per_revision_and_reused_from_their_own_image():
    """A fresh worker has no layer cache, and :latest's inline cache cannot restore the weights
    stage (it reaches the image only through COPY --from): the weights live in their own image,
    built only when missing, and the service build copies /models from it."""
    script = step("build")["args"][1]
    weights_ref = resolve(
        "${_REGION}-docker.pkg.dev/$PROJECT_ID/${_REPOSITORY}/${_SERVICE}-weights:"
        "${_QUANT}-r${_WEIGHTS_REVISION}"
    )
    assert weights_ref == (
        "us-east4-docker.pkg.dev/my-project/pawfect-edit/pawfect-edit-inpaint-weights:Q4_0-r1"
    )
    assignment = re.search(r"^\s*weights=(\S+)$", script, re.M)
    assert assignment and resolve(assignment.group(1)) == weights_ref
    guard = re.search(
        r'if ! docker manifest inspect "\$\$weights" > /dev/null 2>&1; then(.*?)\n\s*fi\n',
        script,
        re.S,
    )
    assert guard, "the weights image is built only when it is missing"
    assert "docker build" in guard.group(1) and 'docker push "$$weights"' in guard.group(1)
    weights = dict(weights_build_options())
    assert weights["--target"] == "weights-real"
    assert weights["--tag"] == "$$weights"
    final = docker_build_options()
    args = [resolve(v) for o, v in final if o == "--build-arg"]
    assert "WEIGHTS=image" in args and "WEIGHTS_IMAGE=$weights" in args
    assert "BUILDKIT_INLINE_CACHE=1" in args

    def quant(options: list[tuple[str, str]]) -> list[str]:
        return [v for o, v in options if o == "--build-arg" and v.startswith("QUANT=")]

    assert quant(final) == quant(weights_build_options()) == ["QUANT=${_QUANT}"]


# --- deploy -------------------------------------------------------------------------------------


def test_deploy_settings():
    args = deploy_args()
    assert args[:2] == ["run", "deploy"]
    assert resolve(args[2]) == "pawfect-edit-inpaint"
    flags = {k: (resolve(v) if v is not None else None) for k, v in flag_values(args).items()}
    expected = {
        "region": "us-east4",
        "gpu": "1",
        "gpu-type": "nvidia-l4",
        "no-gpu-zonal-redundancy": None,
        "cpu": "8",
        "memory": "32Gi",
        "no-cpu-throttling": None,
        "concurrency": "6",
        "min-instances": "0",
        "max-instances": "1",
        "no-allow-unauthenticated": None,
    }
    for name, value in expected.items():
        assert name in flags and flags[name] == value, f"--{name}={flags.get(name)!r}"
    assert flag_values(args)["max-instances"] == "${_MAX_INSTANCES}"
    assert re.fullmatch(
        r"[a-z][a-z0-9-]+@my-project\.iam\.gserviceaccount\.com", flags["service-account"]
    )
    assert "allow-unauthenticated" not in flags
    assert not {"set-secrets", "update-secrets"} & set(flags), "ADC, no key secrets by default"


def duration_seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    total = 0
    for number, unit in re.findall(r"(\d+)([smh]?)", text):
        total += int(number) * units[unit or "s"]
    return total


def test_request_timeout_fits_the_pubsub_ack_deadline():
    """The request timeout is the subscription's ack deadline (one substitution for both)."""
    raw = flag_values(deploy_args())["timeout"]
    assert raw == "${_ACK_DEADLINE}"
    timeout = duration_seconds(resolve(raw))
    assert 0 < timeout <= 600


def test_the_delivery_step_runs_the_deploy_script_after_the_deploy():
    """tools/deploy.py ensures the trigger and its subscription on every deploy, after the
    service exists (the trigger and the invoker binding name it), with the deploy's gcloud."""
    ids = [s["id"] for s in config()["steps"]]
    assert ids[-2:] == ["deploy", "delivery"]
    delivery = step("delivery")
    assert delivery["name"] == step("deploy")["name"]
    assert delivery["entrypoint"] == "python3"
    assert delivery["args"][0] == "tools/deploy.py"
    assert (ROOT / delivery["args"][0]).is_file()


def test_runtime_environment_variables():
    env = key_values(flag_values(deploy_args())["set-env-vars"])
    assert env["INPAINT_BUCKET"] == "${_BUCKET}"
    assert env["GOOGLE_CLOUD_PROJECT"] == "$PROJECT_ID"
    assert "FIREBASE_CREDENTIALS" not in env, "ADC through the runtime service account"
    unknown = {k for k in env if k.startswith("INPAINT_")} - setting_env_names()
    assert not unknown, f"not settings of inpaint/config.py: {unknown}"


def test_the_deploy_runs_the_l4_profile_that_keeps_custom_prompts():
    """``ours-l4-gguf`` of docs/performance.md: the Q4_0 file with CLIP and T5 offloaded to CPU
    memory (left on the GPU after the first custom prompt, they would not fit beside the
    transformer and a 1 MP job), nothing dequantized, no FP8 (it needs Q8_0 and an image
    without text encoders, and a GPU measurement first), and no compile (the image has no C
    compiler)."""
    from benchmarks.perf_variants import variant_settings

    profile = variant_settings("ours-l4-gguf")
    env = key_values(flag_values(deploy_args())["set-env-vars"])
    substitutions = yaml.safe_load(CLOUDBUILD.read_text())["substitutions"]
    assert substitutions["_QUANT"] == profile["quant"] == "Q4_0"
    assert profile["offload_text_encoders"] is True
    assert env["INPAINT_OFFLOAD_TEXT_ENCODERS"] == "true"
    assert "INPAINT_DEQUANTIZE" not in env and "INPAINT_CPU_OFFLOAD" not in env
    assert env.get("INPAINT_FP8", "off") == "off"
    assert env.get("INPAINT_COMPILE", "false") == "false"


def test_probes():
    flags = flag_values(deploy_args())
    startup = key_values(flags["startup-probe"])
    liveness = key_values(flags["liveness-probe"])
    assert startup["httpGet.path"] == "/ready"
    assert liveness["httpGet.path"] == "/health"
    for probe in (startup, liveness):
        assert 1 <= int(probe["timeoutSeconds"]) <= int(probe["periodSeconds"])
    period, failures = int(startup["periodSeconds"]), int(startup["failureThreshold"])
    assert period <= 240 and int(startup.get("initialDelaySeconds", 0)) <= 240
    # Long enough for a cold load of ~17 GB of weights, within Cloud Run's cap (600 s; 1800 s
    # with a GPU).
    assert 600 <= period * failures <= 1800
    assert failures >= 60


@needs_gcloud
def test_probe_keys_are_supported_by_gcloud():
    flags = flag_values(deploy_args())
    helped = gcloud_help(("run", "deploy"))
    for flag in ("startup-probe", "liveness-probe"):
        described = " ".join(helped.section(flag).split())
        supported = re.search(r"Currently supported keys are: (.*?)\.(?:\s|$)", described)
        assert supported, f"--{flag}: no list of keys in the help"
        keys = {k.strip() for k in supported.group(1).split(",")}
        assert set(key_values(flags[flag])) <= keys, f"--{flag}: {keys}"


# --- gcloud ---------------------------------------------------------------------------------------


def gcloud_steps() -> list[tuple[str, list[str]]]:
    from tools.deploy import GPU_PROFILES

    found = [(f"deploy ({gpu})", deploy_args(gpu)) for gpu in GPU_PROFILES]
    for s in config()["steps"]:
        if s.get("entrypoint") == "gcloud" or s["name"].endswith("/gcloud"):
            found.append((s["id"], s["args"]))
        elif s.get("entrypoint") in ("bash", "sh"):
            assert "gcloud" not in " ".join(s["args"]), "write gcloud steps as plain args lists"
    return found


@needs_gcloud
def test_every_gcloud_flag_exists():
    problems = []
    steps = gcloud_steps()
    assert steps, "the deploy step runs gcloud"
    for step_id, args in steps:
        problems += check_gcloud_invocation(args, f"step {step_id}", always_help=True)
    assert not problems, "\n".join(problems)


@needs_gcloud
def test_flags_were_checked_against_the_gcloud_that_deploys():
    """The deploy step pins a google-cloud-cli release (the registry keeps them about a year, so
    the pin moves forward) that is not older than the gcloud whose help this suite reads."""
    image = step("deploy")["name"]
    match = re.fullmatch(r"gcr\.io/google\.com/cloudsdktool/google-cloud-cli:([\d.]+)-slim", image)
    assert match, image
    version_file = Path(os.path.realpath(GCLOUD)).parent.parent / "VERSION"
    if not version_file.is_file():
        pytest.skip("cannot tell the local gcloud version")

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in text.strip().split("."))

    assert version(match.group(1)) >= version(version_file.read_text())


# --- the runbook's gcloud commands ------------------------------------------------------------


def _substitutions(line: str) -> tuple[str, list[str]]:
    """``line`` with each ``$(...)`` replaced by a word, and the inner commands."""
    out, inner, i = [], [], 0
    while i < len(line):
        if line.startswith("$(", i):
            depth, j, quote = 1, i + 2, None
            while j < len(line) and depth:
                char = line[j]
                if quote:
                    quote = None if char == quote else quote
                elif char in "'\"":
                    quote = char
                elif char == "(":
                    depth += 1
                elif char == ")":
                    depth -= 1
                j += 1
            body = line[i + 2 : j - 1]
            rest, nested = _substitutions(body)
            inner += [rest, *nested]
            out.append("SUBSTITUTED")
            i = j
        else:
            out.append(line[i])
            i += 1
    return "".join(out), inner


def runbook_gcloud_invocations() -> list[tuple[int, list[str]]]:
    """(block number, args after ``gcloud``) for every gcloud command in the bash blocks."""
    found = []
    blocks = re.findall(r"^```bash\n(.*?)^```", RUNBOOK.read_text(), re.M | re.S)
    for number, block in enumerate(blocks, 1):
        lines, heredoc = [], None
        for line in block.replace("\\\n", " ").splitlines():
            if heredoc:
                heredoc = None if line.strip() == heredoc else heredoc
                continue
            start = re.search(r"<<-?\s*'?(\w+)'?", line)
            heredoc = start.group(1) if start else None
            lines.append(line)
        for line in lines:
            outer, inner = _substitutions(line)
            for command in (outer, *inner):
                lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|()<>")
                lexer.whitespace_split = True
                words = list(lexer)
                for i, word in enumerate(words):
                    if word == "gcloud":
                        args = []
                        for arg in words[i + 1 :]:
                            if arg and set(arg) <= set(";&|()<>"):
                                break
                            args.append(arg)
                        found.append((number, args))
    return found


def test_runbook_has_the_commands_the_issue_asks_for():
    commands = {" ".join(command_words(args)) for _, args in runbook_gcloud_invocations()}
    for needed in (
        "services enable",
        "artifacts repositories create",
        "secrets create",
        "iam service-accounts create",
        "builds submit",
        "eventarc triggers describe",
        "pubsub subscriptions describe",
        "run services update-traffic",
        "logging read",
    ):
        assert any(c.startswith(needed) for c in commands), f"gcloud {needed}"
    text = RUNBOOK.read_text()
    for fragment in (
        "tools/deploy.py",
        "--dead-letter-topic",
        "--max-delivery-attempts",
        "--min-retry-delay=10s",
        "--max-retry-delay=60s",
        "--ack-deadline=600",
        "jsonPayload.sessionId",
        "severity",
        "0.0003947",
        "0.0001867",
        "not implemented",
    ):
        assert fragment in text, fragment


# What tools/deploy.py applies on every deploy: no runbook command may do it by hand.
DEPLOYED_BY_THE_SCRIPT = {
    "pubsub topics create",
    "pubsub subscriptions create",
    "pubsub subscriptions update",
    "pubsub topics add-iam-policy-binding",
    "pubsub subscriptions add-iam-policy-binding",
    "eventarc triggers create",
    "eventarc triggers update",
    "run services add-iam-policy-binding",
}


def test_the_runbook_keeps_only_once_per_project_steps_of_the_delivery():
    manual = {
        " ".join(command_words(args)) for _, args in runbook_gcloud_invocations()
    } & DEPLOYED_BY_THE_SCRIPT
    assert not manual, f"applied by every deploy (tools/deploy.py), not by hand: {manual}"


@needs_gcloud
def test_every_gcloud_flag_in_the_runbook_exists():
    invocations = runbook_gcloud_invocations()
    assert len(invocations) >= 20
    problems = []
    for block, args in invocations:
        problems += check_gcloud_invocation(args, f"runbook bash block {block}", always_help=False)
    assert not problems, "\n".join(problems)

"""A recording stand-in for ``gcloud``, for the parts of the deploy no emulator serves
(Eventarc, IAM policies, Cloud Run, service accounts).

Every call is appended to the JSON-lines log ``$FAKE_GCLOUD_LOG`` (its argv) and answered from
the JSON state file ``$FAKE_GCLOUD_STATE``, which the commands change as the real services
would (a created trigger gets its own push subscription, with Eventarc's defaults). With
``$FAKE_GCLOUD_REAL`` set (the real gcloud, its environment pointed at Google's Pub/Sub
emulator), topics and subscriptions are served by the emulator instead: only their IAM
policies stay here (the emulator answers 501 to getIamPolicy).

Run as ``python fake_gcloud.py ARGS``; it fails like gcloud (exit 1, NOT_FOUND on stderr).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

GLOBAL = ("--project=", "--quiet", "--format=")


def load(path: Path) -> dict:
    state = json.loads(path.read_text()) if path.is_file() else {}
    for key in ("accounts", "topics", "subscriptions", "policies", "triggers", "services"):
        state.setdefault(key, {} if key != "accounts" else [])
    return state


def flags(args: list[str]) -> dict[str, str]:
    found = {}
    for arg in args:
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            found[name] = value
    return found


def fail(message: str) -> int:
    print(f"ERROR: (gcloud) {message}", file=sys.stderr)
    return 1


def short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def main(argv: list[str]) -> int:
    log = Path(os.environ["FAKE_GCLOUD_LOG"])
    with log.open("a") as f:
        f.write(json.dumps(argv) + "\n")
    state_path = Path(os.environ["FAKE_GCLOUD_STATE"])
    state = load(state_path)
    project = flags(argv).get("project", "my-project")
    words = [a for a in argv if not a.startswith(GLOBAL)]
    positional = [a for a in words if not a.startswith("--")]
    opts = flags(words)
    real = os.environ.get("FAKE_GCLOUD_REAL")
    group, verb, name = tuple(positional[:2]), positional[2], positional[3]

    def out(document: object) -> int:
        print(json.dumps(document))
        return 0

    def save() -> int:
        state_path.write_text(json.dumps(state, indent=1))
        return 0

    def real_gcloud(args: list[str]) -> int:
        proc = subprocess.run([*shlex.split(real), *args], capture_output=True, text=True)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        return proc.returncode

    if verb in ("get-iam-policy", "add-iam-policy-binding"):
        key = f"{' '.join(group)} {short(name)}"
        policy = state["policies"].setdefault(key, {"bindings": []})
        if verb == "get-iam-policy":
            return out(policy)
        for binding in policy["bindings"]:
            if binding["role"] == opts["role"]:
                binding["members"] = sorted({*binding["members"], opts["member"]})
                break
        else:
            policy["bindings"].append({"role": opts["role"], "members": [opts["member"]]})
        return save()

    if group == ("iam", "service-accounts") and verb == "describe":
        if name in state["accounts"]:
            return out({"email": name})
        return fail(f"NOT_FOUND: Unknown service account {name}")

    if group[0] == "pubsub" and real:
        return real_gcloud(argv)

    if group == ("pubsub", "topics"):
        topics = state["topics"]
        if verb == "describe":
            return out(topics[name]) if name in topics else fail("NOT_FOUND: Resource not found")
        if verb == "create":
            topics[name] = {"name": f"projects/{project}/topics/{name}"}
            return save()

    if group == ("pubsub", "subscriptions"):
        subs, key = state["subscriptions"], short(name)
        if verb == "describe":
            return out(subs[key]) if key in subs else fail("NOT_FOUND: Resource not found")
        sub = subs.setdefault(key, {"name": f"projects/{project}/subscriptions/{key}"})
        if verb == "create":
            sub["topic"] = f"projects/{project}/topics/{opts['topic']}"
        if "ack-deadline" in opts:
            sub["ackDeadlineSeconds"] = int(opts["ack-deadline"])
        if "message-retention-duration" in opts:
            sub["messageRetentionDuration"] = opts["message-retention-duration"]
        if opts.get("expiration-period") == "never":
            sub["expirationPolicy"] = {}
        if "min-retry-delay" in opts:
            sub["retryPolicy"] = {
                "minimumBackoff": opts["min-retry-delay"],
                "maximumBackoff": opts["max-retry-delay"],
            }
        if "dead-letter-topic" in opts:
            sub["deadLetterPolicy"] = {
                "deadLetterTopic": opts["dead-letter-topic"],
                "maxDeliveryAttempts": int(opts["max-delivery-attempts"]),
            }
        return save()

    if group == ("eventarc", "triggers"):
        triggers = state["triggers"]
        if verb == "describe":
            if name in triggers:
                return out(triggers[name])
            return fail(f"NOT_FOUND: Resource '{name}' was not found")
        trigger = triggers.setdefault(name, {"name": name})
        if "destination-run-service" in opts:
            trigger["destination"] = {
                "cloudRun": {
                    "service": opts["destination-run-service"],
                    "region": opts["destination-run-region"],
                    "path": opts["destination-run-path"],
                }
            }
        if "event-filters" in opts:
            trigger["eventFilters"] = [
                {"attribute": attribute, "value": value}
                for attribute, _, value in (
                    p.partition("=") for p in opts["event-filters"].split(",")
                )
            ]
        if "event-filters-path-pattern" in opts:
            attribute, _, value = opts["event-filters-path-pattern"].partition("=")
            trigger["eventFilters"].append(
                {"attribute": attribute, "value": value, "operator": "match-path-pattern"}
            )
        if "event-data-content-type" in opts:
            trigger["eventDataContentType"] = opts["event-data-content-type"]
        if "service-account" in opts:
            trigger["serviceAccount"] = opts["service-account"]
        if verb == "create":
            sub = f"eventarc-{opts['location']}-{name}-sub-001"
            topic = opts.get("transport-topic")
            if topic is None:  # a Firestore trigger: Eventarc makes its own topic
                topic = f"projects/{project}/topics/eventarc-{opts['location']}-{name}-001"
                if real:
                    rc = real_gcloud(
                        [
                            "pubsub",
                            "topics",
                            "create",
                            short(topic),
                            f"--project={project}",
                            "--quiet",
                        ]
                    )
                    if rc:
                        return rc
            path = f"projects/{project}/subscriptions/{sub}"
            trigger["transport"] = {"pubsub": {"topic": topic, "subscription": path}}
            if real:  # the push subscription Eventarc makes, with gcloud's (= its) defaults
                rc = real_gcloud(
                    ["pubsub", "subscriptions", "create", sub, f"--topic={short(topic)}",
                     "--push-endpoint=http://127.0.0.1:9/", f"--project={project}", "--quiet"]
                )  # fmt: skip
                if rc:
                    return rc
            else:
                state["subscriptions"][sub] = {
                    "name": f"projects/{project}/subscriptions/{sub}",
                    "topic": topic,
                    "ackDeadlineSeconds": 10,
                    "messageRetentionDuration": "86400s",
                    "pushConfig": {"pushEndpoint": "https://example.run.app/"},
                }
        return save()

    if group == ("run", "services"):
        services = state["services"]
        if name not in services:
            return fail(f"NOT_FOUND: Cannot find service [{name}]")
        service = services[name]
        if verb == "describe":
            return out(service)
        if verb == "update":
            env = service["spec"]["template"]["spec"]["containers"][0].setdefault("env", [])
            for pair in opts["update-env-vars"].split(","):
                key, _, value = pair.partition("=")
                env[:] = [e for e in env if e["name"] != key] + [{"name": key, "value": value}]
            return save()

    return fail(f"the stand-in does not know `gcloud {' '.join(words)}`")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

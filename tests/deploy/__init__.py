"""Checks of the deployment files (Dockerfile, cloudbuild.yaml, eventarc.yaml, the runbook).

They need neither a Docker engine nor a Google Cloud project: the Dockerfile is parsed
(dockerfile-parse) and linted (hadolint), the YAML files are parsed, and gcloud flags are checked
against the help text of the locally installed gcloud, which works offline.
"""

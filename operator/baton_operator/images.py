"""Names and tags of baton's container images: the one place that defines them.

Released images live in ``ghcr.io/baton-dev`` tagged with the package version; the chart's
``values.yaml`` and the operator's default worker image say the same (a unit test checks).
``make images`` builds local ``:dev`` images of both, which the sandbox's real node runs.
"""

from __future__ import annotations

from baton_operator import __version__

REGISTRY = "ghcr.io/baton-dev"
OPERATOR = "baton-operator"
WORKER = "baton-worker"
DEV_TAG = "dev"


def release_image(name: str) -> str:
    """``ghcr.io/baton-dev/<name>:<version>``: what a released chart runs."""
    return f"{REGISTRY}/{name}:{__version__}"


def dev_image(name: str) -> str:
    """``<name>:dev``: the image `make images` builds from the working tree."""
    return f"{name}:{DEV_TAG}"


DEFAULT_WORKER_IMAGE = release_image(WORKER)
DEFAULT_OPERATOR_IMAGE = release_image(OPERATOR)


def qualified(reference: str) -> str:
    """The fully qualified form a container runtime stores a reference under.

    ``baton-worker:dev`` -> ``docker.io/library/baton-worker:dev``; ``org/x:1`` ->
    ``docker.io/org/x:1``; a reference whose first component is a registry (has a dot or a
    port, or is ``localhost``) is kept. A reference without a tag or digest gets ``:latest``.
    """
    name, _, digest = reference.partition("@")
    first, sep, rest = name.partition("/")
    if not sep:
        name = f"docker.io/library/{name}"
    elif not ("." in first or ":" in first or first == "localhost"):
        name = f"docker.io/{name}"
    last = name.rsplit("/", 1)[-1]
    if not digest and ":" not in last:
        name += ":latest"
    return f"{name}@{digest}" if digest else name

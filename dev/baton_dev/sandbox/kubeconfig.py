"""Kubeconfig files for the sandbox: client-certificate ones for the components and the admin,
token ones for ServiceAccounts (so tests and the operator act under their RBAC)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CLUSTER = "baton-sandbox"


def kubeconfig_dict(
    server: str,
    ca_file: Path,
    user: str,
    *,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    token: str | None = None,
    namespace: str = "default",
) -> dict[str, Any]:
    """A one-context kubeconfig for ``user`` on the sandbox, with a client cert or a token."""
    if (client_cert is None) == (token is None):
        raise ValueError("kubeconfig_dict: give exactly one of client_cert or token")
    creds: dict[str, str]
    if token is not None:
        creds = {"token": token}
    else:
        if client_key is None:
            raise ValueError("kubeconfig_dict: client_key is required with client_cert")
        creds = {"client-certificate": str(client_cert), "client-key": str(client_key)}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CLUSTER, "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": creds}],
        "contexts": [
            {
                "name": f"{user}@{CLUSTER}",
                "context": {"cluster": CLUSTER, "user": user, "namespace": namespace},
            }
        ],
        "current-context": f"{user}@{CLUSTER}",
        "preferences": {},
    }


def write_kubeconfig(path: Path, config: dict[str, Any]) -> Path:
    """Write ``config`` to ``path`` (mode 0600, since it holds credentials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path

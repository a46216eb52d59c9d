"""A handle on a running sandbox: paths, a kubectl helper, ServiceAccount kubeconfigs."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .kubeconfig import kubeconfig_dict, write_kubeconfig
from .layout import Layout

KUBECTL_TIMEOUT_S = 60.0


class KubectlError(RuntimeError):
    """kubectl exited non-zero; carries its stderr."""

    def __init__(self, args: tuple[str, ...], returncode: int, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} failed ({returncode}): {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class Sandbox:
    """A running sandbox, as the CLI, the pytest fixtures and the tests see it.

    ``kubeconfig`` is the admin kubeconfig (user ``baton-sandbox-admin``, group
    ``system:masters``); ``kubeconfig_for_service_account`` gives a token kubeconfig that acts
    under a ServiceAccount's RBAC.
    """

    state_dir: Path
    server: str
    kubeconfig: Path
    kubectl_path: Path
    helm_path: Path
    ca_file: Path

    @property
    def layout(self) -> Layout:
        return Layout(self.state_dir)

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """os.environ plus KUBECONFIG and a PATH that starts with the sandbox's kubectl and helm."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(kubeconfig or self.kubeconfig)
        dirs = dict.fromkeys([str(self.kubectl_path.parent), str(self.helm_path.parent)])
        env["PATH"] = os.pathsep.join([*dirs, env.get("PATH", "")])
        # Keep helm's caches and repositories out of the user's home.
        for var, sub in (
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_DATA_HOME", "data"),
        ):
            env.setdefault(var, str(self.state_dir / "helm" / sub))
        return env

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = KUBECTL_TIMEOUT_S,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the sandbox's kubectl (admin unless ``kubeconfig`` is given).

        Raises KubectlError on a non-zero exit when ``check``; subprocess.TimeoutExpired after
        ``timeout`` seconds.
        """
        cmd = [str(self.kubectl_path), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False, env=self.env()
        )
        if check and proc.returncode != 0:
            raise KubectlError(args, proc.returncode, proc.stderr)
        return proc

    def kubectl_json(self, *args: str, kubeconfig: Path | None = None) -> Any:
        """``kubectl <args> -o json``, parsed."""
        return json.loads(self.kubectl(*args, "-o", "json", kubeconfig=kubeconfig).stdout)

    def apply(self, manifests: list[dict[str, Any]], field_manager: str = "baton-sandbox") -> None:
        """Server-side apply ``manifests`` as admin."""
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests})
        self.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            f"--field-manager={field_manager}",
            "-f",
            "-",
            input=doc,
        )

    def service_account_token(self, namespace: str, name: str, duration: str = "24h") -> str:
        """A bound token for ServiceAccount ``namespace/name`` (TokenRequest API)."""
        out = self.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}")
        return out.stdout.strip()

    def kubeconfig_for_service_account(self, namespace: str, name: str, duration: str = "24h") -> Path:
        """Write and return a kubeconfig that authenticates as ServiceAccount ``namespace/name``.

        The ServiceAccount must exist. Requests made with it are authorized by RBAC exactly
        as they would be for a pod running under that account.
        """
        token = self.service_account_token(namespace, name, duration)
        user = f"system:serviceaccount:{namespace}:{name}"
        config = kubeconfig_dict(self.server, self.ca_file, user, token=token, namespace=namespace)
        path = self.layout.kubeconfigs / f"sa-{namespace}-{name}.kubeconfig"
        return write_kubeconfig(path, config)

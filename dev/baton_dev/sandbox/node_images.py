"""Images for the real node: podman's builds handed to its containerd without a registry.

Each image is exported with skopeo into an OCI layout whose blobs start as hard links to
containerd's content store, so only what containerd lacks is written and streamed to
``ctr images import`` (after a change of baton's code: the top layer and the config).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .nodeplan import NodePaths
from .realnode import RealNodeError, _sh, ctr


def _podman_id(reference: str) -> str | None:
    proc = subprocess.run(
        ["podman", "image", "inspect", "--format={{.Id}}", reference],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def image_rows(listing: str) -> list[tuple[str, str]]:
    """(name, manifest digest) of each image in ``ctr images ls`` output (pure)."""
    rows = [line.split() for line in listing.splitlines()[1:]]
    return [(r[0], r[2]) for r in rows if len(r) >= 3]


def _containerd_config_digest(paths: NodePaths, reference: str) -> str | None:
    for name, digest in image_rows(ctr(paths, "images", "ls", check=False)):
        if name == reference:
            manifest = ctr(paths, "content", "get", digest, check=False)
            try:
                return json.loads(manifest)["config"]["digest"].removeprefix("sha256:")
            except (ValueError, KeyError, TypeError):
                return None
    return None


def _blob(layout: Path, digest: str) -> Path:
    algo, _, hexa = digest.partition(":")
    return layout / "blobs" / algo / hexa


def _content_blobs(paths: NodePaths) -> Path:
    return paths.containerd_root / "io.containerd.content.v1.content" / "blobs" / "sha256"


def _export(paths: NodePaths, reference: str, layout: Path) -> dict[str, Any]:
    """podman's image as an OCI layout (uncompressed layers: the digests containerd stores).

    The layout starts as hard links to containerd's content store, so skopeo writes only the
    blobs containerd lacks (after a change of baton's code: the top layer and the config).
    Returns the image's descriptor in the layout's index.
    """
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}\n')
    (layout / "index.json").write_text('{"schemaVersion": 2, "manifests": []}\n')
    content = _content_blobs(paths)
    if content.is_dir():
        for blob in content.iterdir():
            os.link(blob, blobs / blob.name)
    _sh(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-oci-accept-uncompressed-layers",
            f"containers-storage:{reference}",
            f"oci:{layout}:{reference}",
        ],
        timeout=1800,
    )
    index = json.loads((layout / "index.json").read_text())
    for desc in index["manifests"]:
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == reference:
            return desc
    raise RealNodeError(f"skopeo exported {reference} but {layout}/index.json does not name it")


def _import(paths: NodePaths, layout: Path, desc: dict[str, Any]) -> int:
    """Stream an OCI archive of one image into containerd, holding only the blobs it lacks
    (containerd takes the others from its content store). Returns the bytes sent."""
    manifest = json.loads(_blob(layout, desc["digest"]).read_text())
    wanted = [
        desc["digest"],
        manifest["config"]["digest"],
        *(layer["digest"] for layer in manifest["layers"]),
    ]
    have = set(ctr(paths, "content", "ls", "--quiet", check=False).split())
    missing = [d for d in dict.fromkeys(wanted) if d not in have]
    load = subprocess.Popen(
        ["ctr", f"--address={paths.containerd_socket}", "--namespace=k8s.io", "images", "import", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert load.stdin is not None
    sent = 0
    try:
        with tarfile.open(fileobj=load.stdin, mode="w|") as tar:
            tar.add(layout / "oci-layout", arcname="oci-layout")
            index = json.dumps({"schemaVersion": 2, "manifests": [desc]}).encode()
            info = tarfile.TarInfo("index.json")
            info.size = len(index)
            tar.addfile(info, io.BytesIO(index))
            for digest in missing:
                blob = _blob(layout, digest)
                sent += blob.stat().st_size
                tar.add(blob, arcname=str(blob.relative_to(layout)))
    except BrokenPipeError:
        pass  # ctr exited early: its error is reported below
    finally:
        load.stdin.close()
    err = load.stderr.read().decode(errors="replace") if load.stderr else ""
    if load.wait(timeout=1800) != 0:
        raise RealNodeError(f"ctr images import of {desc['annotations']} failed: {err.strip()[-500:]}")
    return sent


def stale_images(listing: str) -> list[str]:
    """Names in ``ctr images ls`` output that only keep a replaced image alive (pure).

    Importing an image under a name that held another moves the name, but the CRI plugin
    also names every image by its config digest (``sha256:...``) and may name it by digest
    (``repo@sha256:...``), so the replaced image and its 6 GB of layers would stay in the content
    store and the snapshotter for good. A digest name whose manifest no tag points at is stale.
    """
    rows = image_rows(listing)

    def alias(name: str) -> bool:
        return name.startswith("sha256:") or "@sha256:" in name

    tagged = {digest for name, digest in rows if not alias(name)}
    return sorted(name for name, digest in rows if alias(name) and digest not in tagged)


def prune_images(paths: NodePaths, log: Callable[[str], None]) -> list[str]:
    """Remove the node's stale images (see :func:`stale_images`) and let containerd collect their
    content and snapshots at once. Returns the names removed."""
    stale = stale_images(ctr(paths, "images", "ls", check=False))
    if stale:
        ctr(paths, "images", "rm", "--sync", *stale, check=False, timeout=600)
        log(f"removed {len(stale)} replaced image(s) from the node's containerd")
    return stale


def load_images(paths: NodePaths, references: Iterable[str], log: Callable[[str], None]) -> list[str]:
    """Import podman's images into the node's containerd unless it already has the same ones.

    No registry is reachable: pods run what was imported (``imagePullPolicy: IfNotPresent``).
    Only layers containerd lacks are exported and sent, so after a change of baton's code the
    worker image's 6 GB of dependencies are not moved again. Returns the references imported.
    """
    imported: list[str] = []
    for ref in references:
        image_id = _podman_id(ref)
        if image_id is None:
            raise RealNodeError(f"image {ref} is not built: run `make images` (`baton sandbox images`)")
        if _containerd_config_digest(paths, ref) == image_id:
            continue
        t0 = time.monotonic()
        # On the content store's file system, so the layout's hard links work.
        with tempfile.TemporaryDirectory(prefix=".export-", dir=paths.containerd_root) as tmp:
            layout = Path(tmp) / "oci"
            sent = _import(paths, layout, _export(paths, ref, layout))
        log(
            f"imported {ref} into the node's containerd in {time.monotonic() - t0:.1f} s ({sent / 1e6:.0f} MB sent)"
        )
        imported.append(ref)
    prune_images(paths, log)
    return imported

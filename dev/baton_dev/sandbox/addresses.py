"""Names and addresses of the sandbox's real node, shared by the PKI, the control plane's
command lines and the node's own configuration."""

from __future__ import annotations

NODE_NAME = "real-0"
# The pod bridge and its gateway: the node's InternalIP, where pods reach the API server and
# cluster DNS. Kept clear of kwok's fake pod addresses (10.244.0.0/16) and podman's (10.88.0.0/16).
BRIDGE = "baton0"
POD_SUBNET = "10.89.0.0/24"
NODE_IP = "10.89.0.1"

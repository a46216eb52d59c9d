"""Local Kubernetes sandbox: real control plane binaries plus kwok-simulated GPU node pools."""

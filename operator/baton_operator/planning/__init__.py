"""Capacity planning for baton pools (pure: no torch, no numpy; runs in the operator image).

* :mod:`.profile` — the ``baton-profile/v1`` file and its fitted cost functions;
* :mod:`.workload` — arrivals and lengths;
* :mod:`.simulate` — a discrete-event simulation of disaggregated and colocated pools;
* :mod:`.plan` — the cheapest deployment meeting TTFT and ITL SLOs, and `baton plan`'s report.
"""

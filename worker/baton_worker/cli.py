"""The `baton` command: a thin dispatcher.

Each subcommand lives in its own module exposing ``main(argv) -> int`` and is imported
only when used, so `baton operator` never imports torch and the operator image stays small.
What runs in production (worker, router, operator, up, plan) comes with baton; the sandbox,
the benchmarks and `baton profile` are development tools in the ``baton_dev`` package
(``dev/`` of a checkout, installed by `make install`), which the images do not carry.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": (
        "baton_worker.local_stack",
        "run the disaggregated stack locally: router + prefill + decode workers",
    ),
    "worker": ("baton_worker.server.main", "run a prefill or decode worker (--role prefill|decode)"),
    "router": ("baton_worker.router.main", "run the OpenAI-compatible router"),
    "operator": ("baton_operator.main", "run the InferencePool operator (kopf)"),
    "sandbox": ("baton_dev.sandbox.cli", "local Kubernetes control plane with simulated GPU pools"),
    "profile": (
        "baton_dev.bench.profile",
        "measure this machine's prefill, decode and KV times for `baton plan`",
    ),
    "plan": (
        "baton_operator.planning.cli",
        "the cheapest deployment meeting TTFT/ITL targets, from a profile",
    ),
}
BENCHES: dict[str, tuple[str, str]] = {
    "kv": ("baton_dev.bench.kv", "KV transfer bandwidth between two processes (nixl, grpc, memcpy)"),
    "decode": ("baton_dev.bench.decode", "prefill and decode tokens/s of the engine"),
    "serve": ("baton_dev.bench.serve", "TTFT, ITL and goodput: disaggregated vs colocated"),
    "operator": (
        "baton_dev.bench.operator_pools",
        "InferencePools to Ready on the sandbox, API writes on a no-op resync",
    ),
    "autoscale": ("baton_dev.bench.autoscale", "reaction time from a queue spike to new replicas"),
    "plan": (
        "baton_dev.bench.plan_check",
        "the planner's predictions against the real stack at several loads",
    ),
}


def _usage() -> str:
    lines = ["usage: baton <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["  bench      benchmarks, JSON with --json:"]
    lines += [f"    {name:<8} {desc}" for name, (_, desc) in BENCHES.items()]
    return "\n".join(lines)


DEV_PACKAGE = "baton_dev"


def _run(module: str, argv: list[str]) -> int:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError:
        if not module.startswith(DEV_PACKAGE + ".") or importlib.util.find_spec(DEV_PACKAGE) is not None:
            raise
        print(
            f"baton: {module} is one of baton's development tools, not installed here: from a "
            "baton checkout run `make install` (or `pip install -e dev/`)",
            file=sys.stderr,
        )
        return 2
    return int(mod.main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `baton` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    cmd, rest = args[0], args[1:]
    if cmd in ("--version", "version"):
        from baton_worker import __version__

        print(f"baton {__version__}")
        return 0
    if cmd == "bench":
        if not rest or rest[0] not in BENCHES:
            print(_usage(), file=sys.stderr)
            print(f"\nbaton bench: expected one of {', '.join(BENCHES)}", file=sys.stderr)
            return 2
        return _run(BENCHES[rest[0]][0], rest[1:])
    if cmd not in COMMANDS:
        print(f"baton: unknown command {cmd!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return _run(COMMANDS[cmd][0], rest)


if __name__ == "__main__":
    sys.exit(main())

"""baton's benchmarks (`baton bench ...`, `baton profile`): each prints JSON with --json."""

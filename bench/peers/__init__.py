"""The peers the benchmarks compare modelfleet with: bare apps, Ray Serve, MLServer."""

"""Demo data: seed 002's producer (five signals) for any number of simulated devices.

`python -m backend.producer --devices 3` POSTs to the service's seed-002 route
(`/api/telemetry`); docs/dashboard.md shows it with `make demo`.
"""

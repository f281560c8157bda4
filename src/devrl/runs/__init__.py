"""What stores and schedules runs: run directories and their manifests, training into them,
sweeps on Ray, and the compact export of finished runs."""

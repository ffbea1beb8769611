"""The benchmark harness: methods, measurement, reports, plots, model pairs and prompts."""

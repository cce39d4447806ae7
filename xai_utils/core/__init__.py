"""The base every layer builds on: the method registry and `Explanation`, target resolution,
hooks, temporary model state, input statistics and small shared tensor operations. Nothing
here imports from the rest of the package."""

"""Models: finding a model by its string, loading and caching it on a device, reading its configs."""

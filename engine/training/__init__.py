"""Training: the request and its events, the loop, the one background job, checkpoints, data and objectives."""

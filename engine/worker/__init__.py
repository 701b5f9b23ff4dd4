"""The device worker: sampling runs in a process of their own, so the server's threads never compete with the
denoising loop for the interpreter lock, a stopped run can end without the server waiting, and a crash or an
out-of-memory in a run leaves the server serving. The facade queues runs through :class:`engine.worker.runs.Runs`
(a batch count's runs: :func:`engine.worker.runs.iter_batch`) and times them with :mod:`engine.worker.timing`."""

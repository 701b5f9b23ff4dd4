"""The device worker: sampling runs in a process of their own, so the server's threads never compete with the
denoising loop for the interpreter lock, a stopped run can end without the server waiting, and a crash or an
out-of-memory in a run leaves the server serving."""

"""Diffusion Workbench's engine; the front door is :class:`engine.workbench.Workbench`."""

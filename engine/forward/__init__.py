"""The forward process: an image noised to x_t, and the schedule's curves."""

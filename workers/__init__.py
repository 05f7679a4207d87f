"""Stream consumers that apply accepted events to the learned state."""

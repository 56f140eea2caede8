"""simulators.demo."""

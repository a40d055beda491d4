"""oomkiller: an eBPF-assisted, low-latency OOM killer for Linux."""
__version__ = "0.1.0"

"""``oomkiller``'s exit codes (see ``cli``)."""

EXIT_OK = 0
EXIT_FAILURE = 1        # the daemon failed at run time
EXIT_CONFIG = 2         # bad command line, config file, environment or kernel flag
EXIT_UNREACHABLE = 3    # control command: no daemon answers on the socket
EXIT_DENIED = 4         # control command: the daemon refused it (not root)

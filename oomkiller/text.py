"""Text as a log line or a terminal gets it: what a cgroup's or process's
owner chose can hold anything. A module of its own, with no imports, so that
the control commands can use it without the rest of the package."""

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(name: str) -> str:
    """A job or process name fit for a log line: backslashes and anything not
    printable (newlines, carriage returns, escape sequences, bidi controls)
    escaped as ``\\n``, ``\\r``, ``\\x1b``, ``\\u202e``, so no name can end a
    line, forge one, or move the terminal's cursor. Names that need none of
    it come back as they are."""
    if name.isprintable() and "\\" not in name:
        return name
    out = []
    for ch in name:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)
